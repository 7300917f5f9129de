"""Encoders and everything around them: OpenCLIP loading, image decoding, batching,
sources of data, adaptation to a user's pairs, the registry of versions.

No web imports here: the HTTP layer lives in ``app``. Import from the modules
(``models.encoder``, ``models.images``, ...): this package imports nothing itself, so
the CLI can read ``models.adapt.methods`` without loading torch.
"""
