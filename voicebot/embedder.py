"""Sentence embeddings for knowledge-base retrieval (sentence-transformers, MiniLM by default).

Vectors come back L2-normalised as float32, so an inner product is the cosine similarity FAISS ranks by.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from voicebot.config import ModelSettings
from voicebot.model_paths import model_path


class Embedder:
    def __init__(self, folder: os.PathLike, *, threads: int = 2) -> None:
        # Never let a missing file turn into a download from a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self._model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        self.dimension = int(self._model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed `texts` as an (n, dimension) float32 array of unit vectors."""
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def load_embedder(models: ModelSettings) -> Embedder:
    return Embedder(model_path(models, "embedder"), threads=models.threads)
