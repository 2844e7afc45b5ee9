"""Keras layers of ASIF and its baselines; each registered serializable under ``asif``."""
from asif_tf.layers.attention import AttentionOutput, ScoreProjection, causal_mask
from asif_tf.layers.embeddings import AttributeEmbedding
from asif_tf.layers.feed_forward import PointwiseFeedForward
from asif_tf.layers.fusion import Fusion
from asif_tf.layers.hie import HomogeneousInformationExtraction
from asif_tf.layers.asif_layer import ASIFLayer

__all__ = ["AttentionOutput", "ScoreProjection", "causal_mask", "AttributeEmbedding",
           "PointwiseFeedForward", "Fusion", "HomogeneousInformationExtraction", "ASIFLayer"]
