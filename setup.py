"""Installable package for asif: Beam preprocessing, the Keras/TFRS ASIF model,
KerasTuner search and TF Serving export/client. Dependencies are pinned exactly:
TFRS 0.7.7 needs Keras 2 (tf-keras) and this exact TensorFlow line."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tensorflow-recommenders==0.7.7",
    "tensorflow-serving-api==2.21.0",
    "apache-beam[tfrecord]==2.77.0",
    "keras-tuner[bayesian]==1.4.8",
    "scipy==1.17.1",          # keras-tuner's BayesianOptimization
    "scikit-learn==1.9.1",
    "tensorboard==2.21.0",
    "protobuf==6.33.6",
    "numpy==2.4.6",
    "grpcio==1.85.3",
    "tqdm==4.70.1",
]

setup(
    name="asif",
    version="0.1.0",
    description="ASIF side-information fusion for sequential recommendation on TensorFlow Recommenders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["asif_tf", "asif_tf.*", "beam_pipelines", "beam_pipelines.*",
                                    "tuning", "tuning.*", "serving", "serving.*"]),
    package_data={"serving": ["models.config", "k8s/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest==9.2.0"], "bench": ["matplotlib==3.10.8"]},
    entry_points={"console_scripts": [
        "asif-train=asif_tf.train:main",
        "asif-preprocess=beam_pipelines.preprocess:main",
    ]},
)
