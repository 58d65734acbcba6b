"""Occurrence-order balance of one (site, item, location): an augmented treap. Pure, no I/O.

Every movement leg at a location is a transform of the balance: ``add d`` (receipt, pick, a
move's legs) or ``reset to c`` (a count). Legs that share an ``occurred_at`` form one *group*
whose transform is their composition (in station, seq order); the balance "right after" any
depletion of the group is the balance after the whole group, so a tie never manufactures a
negative.

Groups are the nodes of a treap keyed by time. Every node carries, for its subtree:

* the composed transform ``x -> (c if reset else x) + k``;
* the minimum balance right after a group holding a *watched* depletion (one without an
  incident yet), split in a part relative to the subtree's input (no reset before it inside
  the subtree: ``x + rel``) and an absolute part (after a reset: ``abs``).

So inserting a late leg, the balance at any time and "which watched depletions are now below
zero from time t on" all cost O(log n) (plus one step per depletion found), where a
re-walk of every later entry would cost O(n).

>>> tr = Track()
>>> tr.add(Leg((1,), reset=False, value=5, depletion=False), 10)
>>> tr.add(Leg((2,), reset=False, value=-7, depletion=True), 20)
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


class Leg:
    """One movement's effect on one location: ``value`` added, or the balance reset to it.

    ``order`` sorts legs inside a tie group (station, seq, event id, leg index); ``owner`` is
    whatever the caller wants back from :meth:`Track.find_negative`. ``watched`` is true for a
    depletion that has no incident yet; after changing it call :meth:`Track.refresh`.
    """

    __slots__ = ("depletion", "order", "owner", "reset", "value", "watched")

    def __init__(self, order: tuple[Any, ...], *, reset: bool, value: int, depletion: bool,
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

    __slots__ = ("g_dep", "g_k", "g_reset", "g_watch", "hi", "k", "left", "legs", "lo", "na",
                 "nr", "prio", "reset", "right", "t")

    def __init__(self, t: int, leg: Leg) -> None:
        self.t = t
        self.prio = random.random()
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.legs = [leg]
        self.g_reset = False
        self.g_k = 0
        self.g_dep = False
        self.g_watch = False
        self.reset = False
        self.k = 0
        self.nr = INF
        self.na = INF
        self.lo = t
        self.hi = t
        _regroup(self)
        _pull(self)


def _regroup(n: _Node) -> None:
    reset = False
    k = 0
    dep = watch = False
    for leg in n.legs:
        if leg.reset:
            reset = True
            k = leg.value
        else:
            k += leg.value
        if leg.depletion:
            dep = True
            if leg.watched:
                watch = True
    n.g_reset, n.g_k, n.g_dep, n.g_watch = reset, k, dep, watch


def _pull(n: _Node) -> None:
    """Recompute n's subtree aggregate from its children and its own group."""
    left = n.left
    if left is None:
        reset = False
        k = 0
        nr = na = INF
        n.lo = n.t
    else:
        reset, k, nr, na = left.reset, left.k, left.nr, left.na
        n.lo = left.lo
    if n.g_reset:
        reset = True
        k = n.g_k
    else:
        k += n.g_k
    if n.g_watch:
        if reset:
            na = min(na, k)
        else:
            nr = min(nr, k)
    right = n.right
    if right is None:
        n.hi = n.t
    else:
        n.hi = right.hi
        if reset:
            na = min(na, right.na, right.nr + k)
        else:
            nr = min(nr, right.nr + k)
            na = min(na, right.na)
        if right.reset:
            reset = True
            k = right.k
        else:
            k += right.k
    n.reset, n.k, n.nr, n.na = reset, k, nr, na


def _insert(n: _Node | None, new: _Node) -> _Node:
    if n is None:
        return new
    if new.t < n.t:
        n.left = _insert(n.left, new)
        if n.left.prio > n.prio:
            top = n.left
            n.left = top.right
            _pull(n)
            top.right = n
            n = top
    else:
        n.right = _insert(n.right, new)
        if n.right.prio > n.prio:
            top = n.right
            n.right = top.left
            _pull(n)
            top.left = n
            n = top
    _pull(n)
    return n


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

    def add(self, leg: Leg, t: int) -> None:
        """Insert a leg at time ``t`` (µs), joining the tie group of that time if any."""
        path = self._path(t)
        if path and path[-1].t == t:
            node = path[-1]
            insort(node.legs, leg, key=_order)
            _regroup(node)
            for n in reversed(path):
                _pull(n)
        else:
            self._root = _insert(self._root, _Node(t, leg))
            self.groups += 1

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
            if t == n.t:
                break
            n = n.left if t < n.t else n.right
        return path

    def balance_after(self, t: int) -> int:
        """Balance after every group with time <= ``t`` (the balance "right after" t)."""
        bal = 0
        n = self._root
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
    """Visit the subtree with input balance x; return its output balance."""
    if n is None:
        return x
    if n.hi < t or (n.lo >= t and min(x + n.nr, n.na) >= 0):
        return _apply(n, x)
    x = _collect(n.left, x, t, out)
    x = n.g_k if n.g_reset else x + n.g_k
    if n.g_watch and x < 0 and n.t >= t:
        out.extend(leg for leg in n.legs if leg.depletion and leg.watched)
    return _collect(n.right, x, t, out)
