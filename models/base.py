"""The interface every trained recommender offers to evaluation and batch scoring.

A recommender scores blocks of users against its whole catalogue, so scoring
can stream users through it in bounded memory (block x n_apps floats at a time).
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np
import scipy.sparse as sp


class Recommender(abc.ABC):
    """A fitted model that scores users against its catalogue.

    Attributes:
        name: short model name (``popularity``, ``ease``, ``cf_bpr``, ``two_tower``, ...).
        app_ids: catalogue order; column j of every score block is ``app_ids[j]``.
        user_ids: users seen in training (row order of any per-user parameters).
    """

    name: str = "base"
    app_ids: np.ndarray
    user_ids: np.ndarray

    @abc.abstractmethod
    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        """Scores for a block of users.

        Args:
            user_ids: the block's users (may include users unseen in training).
            history: ``[len(user_ids), len(app_ids)]`` implicit-feedback weights of
                each user's past interactions, columns in ``app_ids`` order.

        Returns:
            float32 array ``[len(user_ids), len(app_ids)]``; higher is better. Users
            unseen in training get a history-based or popularity-based score, never NaN.
            Seen items are *not* masked here: masking is the caller's job.
        """

    def app_index(self) -> dict[str, int]:
        """Map from app id to column index."""
        return {app_id: index for index, app_id in enumerate(self.app_ids.tolist())}

    def user_index(self) -> dict[str, int]:
        """Map from user id to its row in per-user parameters."""
        return {user_id: index for index, user_id in enumerate(self.user_ids.tolist())}

    def drop_users(self, user_ids: Sequence[str]) -> int:
        """Remove per-user parameters of these users (privacy deletion). Returns rows removed.

        Models without per-user parameters remove nothing.
        """
        return 0


class PerUserArraysRecommender(Recommender):
    """A recommender whose per-user parameters are numpy arrays aligned with ``user_ids``.

    Subclasses name those arrays in ``per_user_arrays`` and call :meth:`index_users`
    after setting ``user_ids``; deletion, pickling and row lookup are shared here.
    """

    #: Attribute names of the arrays whose first axis follows ``user_ids``.
    per_user_arrays: tuple[str, ...] = ()

    def index_users(self) -> None:
        """(Re)build the user id -> row lookup (not pickled: rebuilt on load)."""
        self._user_rows = self.user_index()

    def user_rows(self, user_ids: Sequence[str]) -> np.ndarray:
        """Row of each user in the per-user arrays, -1 for users unseen in training."""
        return np.array([self._user_rows.get(user, -1) for user in user_ids], dtype=np.int64)

    def drop_users(self, user_ids: Sequence[str]) -> int:
        drop = {user for user in user_ids if user in self._user_rows}
        if not drop:
            return 0
        keep = np.array([user not in drop for user in self.user_ids.tolist()], dtype=bool)
        self.user_ids = self.user_ids[keep]
        for name in self.per_user_arrays:
            setattr(self, name, getattr(self, name)[keep])
        self.index_users()
        return int((~keep).sum())

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.index_users()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_user_rows", None)
        return state
