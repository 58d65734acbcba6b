"""Occurrence-order balance of one (site, item, location): an augmented treap. Pure, no I/O.

Every movement leg at a location is a transform of the balance: ``add d`` (receipt, pick, a
move's legs) or ``reset to c`` (a count). Legs that share an ``occurred_at`` form one *group*
whose transform is their composition (in station, seq order); the balance "right after" any
depletion of the group is the balance after the whole group, so a tie never manufactures a
negative.

Groups are the nodes of a treap keyed by time (ranked so that history posted in order is a
perfectly balanced tree; see :meth:`Track.add`). Every node carries, for its subtree:

* the composed transform ``x -> (c if reset else x) + k``;
* the minimum balance right after a group holding a *watched* depletion (one without an
  incident yet), split in a part relative to the subtree's input (no reset before it inside
  the subtree: ``x + rel``) and an absolute part (after a reset: ``abs``).

So inserting a late leg and the balance at any time cost O(log n), where a re-walk of every
later entry would cost O(n); "which watched depletions are now below zero from time t on"
costs O(log n) per depletion found and O(1) when there is none (the usual answer: a
depletion stops being watched once it is below zero), because a subtree whose minimum is not
below zero is skipped wherever it lies.

>>> tr = Track()
>>> tr.add(Leg((1,), reset=False, value=5, depletion=False), 10)
False
>>> tr.add(Leg((2,), reset=False, value=-7, depletion=True), 20)
False
>>> tr.balance_after(15), tr.balance, len(tr.find_negative(0))
(5, -2, 1)
"""

from __future__ import annotations

import random
from bisect import insort
from collections.abc import Iterator
from typing import Any

__all__ = ["INF", "Leg", "Track"]

INF = 1 << 62  # "no depletion here"; stays huge when a real balance is added to it
_random = random.random
_getrandbits = random.getrandbits


class Leg:
    """One movement's effect on one location: ``value`` added, or the balance reset to it.

    ``order`` sorts legs inside a tie group (station, seq, event id, leg index); ``owner`` is
    whatever the caller wants back from :meth:`Track.find_negative`. ``watched`` is true for a
    depletion that has no incident yet; after changing it call :meth:`Track.refresh`.
    """

    __slots__ = ("depletion", "order", "owner", "reset", "value", "watched")

    def __init__(self, order: tuple[Any, ...], reset: bool, value: int, depletion: bool,
                 owner: Any = None) -> None:
        self.order = order
        self.reset = reset
        self.value = value
        self.depletion = depletion
        self.watched = depletion
        self.owner = owner


def _order(leg: Leg) -> tuple[Any, ...]:
    return leg.order


class _Node:
    """A tie group (all legs at one time) and the aggregate of its treap subtree."""

    __slots__ = ("g_k", "g_reset", "g_watch", "hi", "k", "left", "legs", "na", "nr", "prio",
                 "reset", "right", "t")

    def __init__(self, t: int, leg: Leg, prio: float) -> None:
        # A new node is a leaf holding one leg: its group and its subtree are that leg.
        self.t = self.hi = t
        self.prio = prio
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.legs = [leg]
        self.g_reset = self.reset = reset = leg.reset
        self.g_k = self.k = k = leg.value
        self.g_watch = watch = leg.depletion and leg.watched
        if watch:
            if reset:
                self.nr, self.na = INF, k
            else:
                self.nr, self.na = k, INF
        else:
            self.nr = self.na = INF


def _regroup(n: _Node) -> None:
    legs = n.legs
    if len(legs) == 1:
        leg = legs[0]
        n.g_reset, n.g_k, n.g_watch = leg.reset, leg.value, leg.depletion and leg.watched
        return
    reset = False
    k = 0
    watch = False
    for leg in legs:
        if leg.reset:
            reset = True
            k = leg.value
        else:
            k += leg.value
        if leg.depletion and leg.watched:
            watch = True
    n.g_reset, n.g_k, n.g_watch = reset, k, watch


def _pull(n: _Node) -> None:
    """Recompute n's subtree aggregate from its children and its own group."""
    left = n.left
    if left is None:
        if n.g_reset:
            reset = True
            k = n.g_k
            nr = INF
            na = k if n.g_watch else INF
        else:
            reset = False
            k = n.g_k
            na = INF
            nr = k if n.g_watch else INF
    else:
        nr = left.nr
        na = left.na
        if n.g_reset:
            reset = True
            k = n.g_k
        else:
            reset = left.reset
            k = left.k + n.g_k
        if n.g_watch:
            if reset:
                if k < na:
                    na = k
            elif k < nr:
                nr = k
    right = n.right
    if right is None:
        n.hi = n.t
    else:
        n.hi = right.hi
        if reset:
            v = right.nr + k
            if right.na < v:
                v = right.na
            if v < na:
                na = v
        else:
            v = right.nr + k
            if v < nr:
                nr = v
            if right.na < na:
                na = right.na
        if right.reset:
            reset = True
            k = right.k
        else:
            k += right.k
    n.reset, n.k, n.nr, n.na = reset, k, nr, na


class Track:
    """All legs at one (site, item, location), in occurrence order."""

    __slots__ = ("_root", "groups")

    def __init__(self) -> None:
        self._root: _Node | None = None
        self.groups = 0

    @property
    def balance(self) -> int:
        """The latest balance in occurrence order (what is on hand now)."""
        return 0 if self._root is None else self._root.k

    @property
    def last_time(self) -> int | None:
        return None if self._root is None else self._root.hi

    def add(self, leg: Leg, t: int) -> bool:
        """Insert a leg at time ``t`` (µs), joining the tie group of that time if any.

        Returns whether it went in at or before the latest group (a late leg)."""
        path: list[_Node] = []
        n = self._root
        late = n is not None and t <= n.hi
        while n is not None:
            path.append(n)
            nt = n.t
            if t == nt:
                insort(n.legs, leg, key=_order)
                _regroup(n)
                for p in reversed(path):
                    _pull(p)
                return late
            n = n.left if t < nt else n.right
        self.groups += 1
        # The priority's whole part is a rank: for the n-th group appended in order, the
        # number of trailing zero bits of n, which builds history posted in order into a
        # perfectly balanced tree (depth log2 n, against about 1.4 log2 n for uniform
        # priorities); for a late group, a random rank with the same distribution, which
        # keeps the expected depth logarithmic whatever the arrival order. The fraction
        # breaks ties at random.
        if late:
            bits = _getrandbits(32)
            rank = (bits & -bits).bit_length() - 1 if bits else 32
        else:
            g = self.groups
            rank = (g & -g).bit_length() - 1
        new = _Node(t, leg, rank + _random())
        # Attach the new leaf, then rotate it up while its priority beats its parent's.
        prio = new.prio
        while path:
            p = path[-1]
            if p.prio >= prio:
                break
            path.pop()
            if t < p.t:
                p.left = new.right
                _pull(p)
                new.right = p
            else:
                p.right = new.left
                _pull(p)
                new.left = p
        if new.left is not None or new.right is not None:
            _pull(new)
        if not path:
            self._root = new
            return late
        p = path[-1]
        if t < p.t:
            p.left = new
        else:
            p.right = new
        if late:
            for p in reversed(path):
                _pull(p)
            return late
        # An in-order leg (most of them): every node left on the path gains one group after
        # all of its own, so its aggregate extends by that group without reading its children.
        reset, k, watch = new.g_reset, new.g_k, new.g_watch
        for p in path:
            p.hi = t
            if reset:
                p.reset, p.k = True, k
                if watch and k < p.na:
                    p.na = k
            else:
                v = p.k + k
                p.k = v
                if watch:
                    if p.reset:
                        if v < p.na:
                            p.na = v
                    elif v < p.nr:
                        p.nr = v
        return late

    def remove(self, leg: Leg, t: int) -> None:
        """Take a leg out (a void); its group stays, possibly empty (the identity)."""
        path = self._path(t)
        if not path or path[-1].t != t:
            raise KeyError(t)
        node = path[-1]
        node.legs.remove(leg)
        _regroup(node)
        for n in reversed(path):
            _pull(n)

    def refresh(self, t: int) -> None:
        """Recompute the group at ``t`` and its ancestors after a leg's ``watched`` changed."""
        path = self._path(t)
        if path and path[-1].t == t:
            _regroup(path[-1])
            for n in reversed(path):
                _pull(n)

    def _path(self, t: int) -> list[_Node]:
        path = []
        n = self._root
        while n is not None:
            path.append(n)
            nt = n.t
            if t == nt:
                break
            n = n.left if t < nt else n.right
        return path

    def balance_after(self, t: int) -> int:
        """Balance after every group with time <= ``t`` (the balance "right after" t)."""
        n = self._root
        if n is None:
            return 0
        if t >= n.hi:
            return n.k  # at or after the last group: the latest balance
        bal = 0
        while n is not None:
            if t < n.t:
                n = n.left
                continue
            left = n.left
            if left is not None:
                bal = left.k if left.reset else bal + left.k
            bal = n.g_k if n.g_reset else bal + n.g_k
            n = n.right
        return bal

    def find_negative(self, t: int) -> list[Leg]:
        """Watched depletion legs in groups at time >= ``t`` whose group leaves balance < 0."""
        out: list[Leg] = []
        if self._root is not None:
            _collect(self._root, 0, t, out)
        return out

    def walk(self) -> Iterator[tuple[int, list[Leg]]]:
        """Every group (time, legs) in occurrence order; O(n), for tests and diagnostics."""
        stack: list[_Node] = []
        n = self._root
        while stack or n is not None:
            while n is not None:
                stack.append(n)
                n = n.left
            n = stack.pop()
            yield n.t, list(n.legs)
            n = n.right


def _apply(n: _Node, x: int) -> int:
    return n.k if n.reset else x + n.k


def _collect(n: _Node | None, x: int, t: int, out: list[Leg]) -> int:
    """Visit the subtree with input balance x; return its output balance.

    A subtree entirely before t, or whose watched depletions all stay >= 0, is skipped whole.
    """
    if n is None:
        return x
    if n.hi < t or min(x + n.nr, n.na) >= 0:
        return _apply(n, x)
    x = _collect(n.left, x, t, out)
    x = n.g_k if n.g_reset else x + n.g_k
    if n.g_watch and x < 0 and n.t >= t:
        out.extend(leg for leg in n.legs if leg.depletion and leg.watched)
    return _collect(n.right, x, t, out)
