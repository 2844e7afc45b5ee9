"""Baselines of the paper's Table 2; each module registers its builder with ``registry.register``."""
from asif_tf.models.baselines import difsr, fdsa, gru4rec, nova, sasrec, sasrecf  # noqa: F401

from asif_tf.models.baselines.difsr import DecoupledAttentionLayer, DecoupledScoreFusion, DIFSREncoder
from asif_tf.models.baselines.fdsa import FDSAEncoder, FieldAttentionPooling
from asif_tf.models.baselines.gru4rec import GRU4RecEncoder
from asif_tf.models.baselines.nova import NovaLayer, NOVAEncoder
from asif_tf.models.baselines.sasrec import SASRecEncoder
from asif_tf.models.baselines.sasrecf import SASRecFEncoder
from asif_tf.models.baselines.transformer import SelfAttentionBlock, SelfAttentionStack

__all__ = ["SASRecEncoder", "SASRecFEncoder", "FDSAEncoder", "FieldAttentionPooling", "NOVAEncoder", "NovaLayer",
           "DIFSREncoder", "DecoupledAttentionLayer", "DecoupledScoreFusion", "GRU4RecEncoder",
           "SelfAttentionBlock", "SelfAttentionStack"]
