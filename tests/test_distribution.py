"""Distribution strategy and mixed precision, on CPU (CI has no GPU).

Each case runs in a subprocess: logical devices and the global precision policy can only be
set once per process.
"""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = """
import numpy as np
import asif_tf
import tensorflow as tf
sys.path.insert(0, REPO)
from tests.helpers import histories, tiny_config, tiny_info
from asif_tf.models import registry


def make_batch():
    h = histories([8] * 32, seed=3)
    return {"history": tf.constant(h[:, :-1]), "labels": tf.constant(h[:, 1:])}
"""


def run_py(body: str) -> str:
    code = "import sys\nREPO = %r\n" % REPO + COMMON + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_mirrored_strategy_over_two_cpu_replicas_matches_one_device():
    """The same batch split over two replicas gives the same gradient step as one device."""
    out = run_py("""
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        def trained(strategy):
            tf.keras.utils.set_random_seed(0)
            with strategy.scope():
                model = registry.build_model(tiny_config(), tiny_info())
                model.compile(tf.keras.optimizers.SGD(0.5))
                model(batch["history"][:1])   # variables created in the strategy's scope, as train.py does
            ds = tf.data.Dataset.from_tensors(batch)
            model.fit(ds, verbose=0)
            return model.item_embeddings().numpy()
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert mirrored.num_replicas_in_sync == 2
        batch = make_batch()
        a = trained(mirrored)
        b = trained(tf.distribute.OneDeviceStrategy("/cpu:0"))
        print("MAXDIFF", float(np.abs(a - b).max()))
    """)
    diff = float(out.split("MAXDIFF")[1])
    assert diff < 1e-4, diff


def test_mixed_precision_trains_with_finite_loss():
    out = run_py("""
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        batch = make_batch()
        tf.keras.utils.set_random_seed(0)
        model = registry.build_model(tiny_config(), tiny_info())
        model.compile(tf.keras.optimizers.Adam(1e-2))
        assert model.encoder.compute_dtype == "float16"
        first = float(model.compute_loss(batch))
        model.fit(tf.data.Dataset.from_tensors(batch).repeat(20), verbose=0)
        last = float(model.compute_loss(batch))
        print("LOSS", first, last)
    """)
    first, last = map(float, out.split("LOSS")[1].split())
    assert np.isfinite(first) and np.isfinite(last) and last < first


import numpy as np  # noqa: E402
