"""Data: the TFRecord schema, the tf.data input pipeline and the built-in dataset."""
