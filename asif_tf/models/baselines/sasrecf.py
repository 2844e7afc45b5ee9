"""SASRecF (RecBole's feature-aware SASRec): early fusion. The item embedding and the
attribute embeddings of every field are concatenated and projected to d before the
SASRec encoder, so attributes enter the item representation itself."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.fusion import Fusion
from asif_tf.models import registry
from asif_tf.models.baselines.sasrec import SASRecEncoder
from asif_tf.models.baselines.transformer import transformer_kwargs


@tf.keras.utils.register_keras_serializable(package="asif")
class SASRecFEncoder(SASRecEncoder):
    """X0 = Dropout(LN(gamma(ItemEmb(seq), A_1..A_m) + PosEmb(0..n-1))); output = L self-attention
    layers over X0. gamma is ``fusion`` (RecBole: concat, i.e. Linear([E; A_1; ...; A_m]) to d).

    Call: history int [b, n] -> {"sequence": float [b, n, d], "aux_loss": 0}.
    """

    uses_attributes = True

    def __init__(self, *args, fusion="concat", **kwargs):
        super().__init__(*args, **kwargs)
        self.fusion_mode = fusion
        self.fusion = Fusion(fusion, self.hidden_size, self.init_std, name="fusion")

    def input_embedding(self, history):
        return self.fusion(self.item_embedding(history), self.attribute_embedding(history))  # [b, n, d]

    def get_config(self):
        return {**super().get_config(), "fusion": self.fusion_mode}


@registry.register("sasrecf")
def build_sasrecf(cfg, info) -> SASRecFEncoder:
    # Early fusion is defined by concatenation (RecBole's SASRecF); --fusion is the hybrid models' gamma.
    return SASRecFEncoder(**registry.common_kwargs(cfg, info), **transformer_kwargs(cfg.model), fusion="concat",
                          name="encoder")
