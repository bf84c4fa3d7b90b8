"""The interval flush's drain in two steps, for a flush written in slices (issue #21).

:meth:`models.core.Segmenter.drain` takes every changed customer and builds their full
writes at once: encoding a state, its traits and memberships costs ~0.1 ms a customer, so
at 40k events/s (5,000 changed customers a second) the drain alone held the event loop for
hundreds of milliseconds. Here the drain point only takes the states (:func:`drain_states`:
the set of customers, and the cache shrunk to its bound as the drain does); each slice
builds its writes when it goes out (:func:`full_writes`), from the states as they are then.
A state that moved on since the drain point is written as it is then, with its later
offset: Redis holds more than the commit at the end of the flush covers, never less.
``drain_states`` then ``full_writes`` of all of them is ``Segmenter.drain``
(``tests/unit/test_slices.py``).
"""

from __future__ import annotations

from models.core import Segmenter
from models.records import Assignment
from models.state import CustomerState


def drain_states(core: Segmenter) -> tuple[list[CustomerState], set[str]]:
    """The customers changed since the last drain and those of them to explain again (in a
    renamed segment, or bought since); then the cache shrunk to its bound."""
    return core.cache.drain_explained()


def full_writes(core: Segmenter, states: list[CustomerState],
                again: set[str]) -> list[Assignment]:
    """Full writes of ``states`` with the model current when called (explained again:
    those in ``again``), as :meth:`Segmenter.drain` builds them."""
    return core.assigner.full_writes(core.model, states, again)
