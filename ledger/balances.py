"""Occurrence-order balance of one (site, item, location): an augmented treap. Pure, no I/O.

Every movement leg at a location is a transform of the balance: ``add d`` (receipt, pick, a
move's legs) or ``reset to c`` (a count). Legs that share an ``occurred_at`` form one *group*
whose transform is their composition (in the legs' ``order``: a count last, then by station
and seq; see :func:`ledger.engine.legs_of`); the balance "right after" any
depletion of the group is the balance after the whole group, so a tie never manufactures a
negative.

Groups are the nodes of a treap keyed by time (ranked so that history posted in order is a
perfectly balanced tree; see :meth:`Track.add`). A subtree's *summary* is:

* its composed transform ``x -> (c if reset else x) + k``;
* the minimum balance right after a group holding a *watched* depletion (one without an
  incident yet), split in a part relative to the subtree's input (no reset before it inside
  the subtree: ``x + rel``) and an absolute part (after a reset: ``abs``).

So inserting a late leg and the balance at any time cost O(log n), where a re-walk of every
later entry would cost O(n); "which watched depletions are now below zero from time t on"
costs O(log n) per depletion found and O(1) when there is none (the usual answer: a
depletion stops being watched once it is below zero), because a subtree whose minimum is not
below zero is skipped wherever it lies.

Every node keeps the summaries of its two subtrees (the tree's own summary is kept by the
:class:`Track`), not its own: at a million groups most of a late event's cost is reading
nodes that are out of the CPU's caches, and this way updating the path after an insert reads
only the nodes the search down has just read, never their other children.

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


    # Snapshots (pickle) hold many of these: a tuple of the fields is a third of the size
    # of the default slot dictionary and much quicker to read back.
    def __getstate__(self) -> tuple[Any, ...]:
        return (self.order, self.reset, self.value, self.depletion, self.watched, self.owner)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.order, self.reset, self.value, self.depletion, self.watched,
         self.owner) = state


# The order of the one leg that stands for a settled history: before every other leg of its
# time, and comparable with theirs, (reset flag, station, seq, event id, leg number).
_SETTLED = (False, "", -1, "", -1)


def _order(leg: Leg) -> tuple[Any, ...]:
    return leg.order


class _Node:
    """A tie group (all legs at one time) and the summaries of its two subtrees.

    A node keeps its children's summaries rather than its own: updating the path after an
    insert then reads only the nodes the search down has just read, never a sibling (at a
    million groups the siblings near the bottom are out of the CPU's caches).
    """

    __slots__ = ("g_k", "g_reset", "g_watch", "l_k", "l_na", "l_nr", "l_reset", "left", "legs",
                 "prio", "r_k", "r_na", "r_nr", "r_reset", "right", "t")

    def __init__(self, t: int, leg: Leg, prio: float) -> None:
        # A new node is a leaf holding one leg.
        self.t = t
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.prio = prio
        self.legs = [leg]
        self.g_reset = leg.reset
        self.g_k = leg.value
        self.g_watch = leg.depletion and leg.watched
        self.l_reset = self.r_reset = False
        self.l_k = self.r_k = 0
        self.l_nr = self.l_na = self.r_nr = self.r_na = INF

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.t, self.left, self.right, self.prio, self.legs, self.g_reset, self.g_k,
                self.g_watch, self.l_reset, self.l_k, self.l_nr, self.l_na, self.r_reset,
                self.r_k, self.r_nr, self.r_na)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.t, self.left, self.right, self.prio, self.legs, self.g_reset, self.g_k,
         self.g_watch, self.l_reset, self.l_k, self.l_nr, self.l_na, self.r_reset, self.r_k,
         self.r_nr, self.r_na) = state


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


def _summary(n: _Node) -> tuple[bool, int, int, int]:
    """The summary (reset, k, rel, abs) of the subtree at n: its left subtree's, its group's
    and its right subtree's composed."""
    reset, k, nr, na = n.l_reset, n.l_k, n.l_nr, n.l_na
    return _then_group_and_right(n, reset, k, nr, na)


def _then_group_and_right(n: _Node, reset: bool, k: int, nr: int, na: int
                          ) -> tuple[bool, int, int, int]:
    """The summary (reset, k, rel, abs) of (reset, k, rel, abs), then n's group, then n's
    right subtree."""
    if n.g_reset:
        reset = True
        k = n.g_k
    else:
        k += n.g_k
    if n.g_watch:
        if reset:
            if k < na:
                na = k
        elif k < nr:
            nr = k
    v = n.r_nr
    if v != INF:
        v += k
        if reset:
            if v < na:
                na = v
        elif v < nr:
            nr = v
    v = n.r_na
    if v < na:
        na = v
    if n.r_reset:
        return True, n.r_k, nr, na
    return reset, k + n.r_k, nr, na


def _fix_path(path: list[_Node], t: int) -> tuple[bool, int, int, int]:
    """After the last node of ``path`` (the search path for time ``t``) changed: give each
    ancestor its child's new summary, bottom up; the root's summary comes back.

    The loop is :func:`_summary` written out: it runs once per level of every late event."""
    reset, k, nr, na = _summary(path[-1])
    for j in range(len(path) - 2, -1, -1):
        p = path[j]
        if t < p.t:  # the changed subtree is p's left one: then p's group and right subtree
            p.l_reset, p.l_k, p.l_nr, p.l_na = reset, k, nr, na
        else:  # the right one: p's left subtree and group, then it
            p.r_reset, p.r_k, p.r_nr, p.r_na = reset, k, nr, na
            reset, k, nr, na = p.l_reset, p.l_k, p.l_nr, p.l_na
        if p.g_reset:
            reset = True
            k = p.g_k
        else:
            k += p.g_k
        if p.g_watch:
            if reset:
                if k < na:
                    na = k
            elif k < nr:
                nr = k
        v = p.r_nr
        if v != INF:
            v += k
            if reset:
                if v < na:
                    na = v
            elif v < nr:
                nr = v
        v = p.r_na
        if v < na:
            na = v
        if p.r_reset:
            reset = True
            k = p.r_k
        else:
            k += p.r_k
    return reset, k, nr, na


class Track:
    """All legs at one (site, item, location), in occurrence order."""

    __slots__ = ("_abs", "_k", "_last", "_rel", "_reset", "_root", "groups")

    def __init__(self) -> None:
        self._root: _Node | None = None
        self._last = -1  # the latest group's time
        # The whole tree's summary: the balance is _k (the input is 0).
        self._reset, self._k, self._rel, self._abs = False, 0, INF, INF
        self.groups = 0

    @property
    def balance(self) -> int:
        """The latest balance in occurrence order (what is on hand now)."""
        return self._k

    @property
    def last_time(self) -> int | None:
        return None if self._root is None else self._last

    def add(self, leg: Leg, t: int) -> bool:
        """Insert a leg at time ``t`` (µs), joining the tie group of that time if any.

        Returns whether it went in at or before the latest group (a late leg)."""
        path: list[_Node] = []
        n = self._root
        late = n is not None and t <= self._last
        if late:
            while n is not None:
                path.append(n)
                nt = n.t
                if t == nt:
                    insort(n.legs, leg, key=_order)
                    _regroup(n)
                    self._reset, self._k, self._rel, self._abs = _fix_path(path, t)
                    return True
                n = n.left if t < nt else n.right
        else:
            while n is not None:  # after every group: down the right spine
                path.append(n)
                n = n.right
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
        # Rotate the new node up while its priority beats its parent's: the parent takes the
        # new node's inner subtree, with its summary, and becomes its child.
        prio = new.prio
        while path:
            p = path[-1]
            if p.prio >= prio:
                break
            path.pop()
            if t < p.t:
                p.left = new.right
                p.l_reset, p.l_k, p.l_nr, p.l_na = new.r_reset, new.r_k, new.r_nr, new.r_na
                new.right = p
                new.r_reset, new.r_k, new.r_nr, new.r_na = _summary(p)
            else:
                p.right = new.left
                p.r_reset, p.r_k, p.r_nr, p.r_na = new.l_reset, new.l_k, new.l_nr, new.l_na
                new.left = p
                new.l_reset, new.l_k, new.l_nr, new.l_na = _summary(p)
        if not path:
            self._root = new
            if t > self._last:
                self._last = t
            self._reset, self._k, self._rel, self._abs = _summary(new)
            return late
        p = path[-1]
        if t < p.t:
            p.left = new
        else:
            p.right = new
        if late:
            path.append(new)
            self._reset, self._k, self._rel, self._abs = _fix_path(path, t)
            return True
        # An in-order leg (most of them): the new group is the last of every path node's
        # right subtree, so each of those summaries extends by that group alone.
        self._last = t
        reset, k, watch = new.g_reset, new.g_k, new.g_watch
        for p in path:
            if reset:
                p.r_reset, p.r_k = True, k
                if watch and k < p.r_na:
                    p.r_na = k
            else:
                v = p.r_k + k
                p.r_k = v
                if watch:
                    if p.r_reset:
                        if v < p.r_na:
                            p.r_na = v
                    elif v < p.r_nr:
                        p.r_nr = v
        if reset:
            self._reset, self._k = True, k
            if watch and k < self._abs:
                self._abs = k
        else:
            v = self._k + k
            self._k = v
            if watch:
                if self._reset:
                    if v < self._abs:
                        self._abs = v
                elif v < self._rel:
                    self._rel = v
        return False

    def remove(self, leg: Leg, t: int) -> None:
        """Take a leg out (a void); its group stays, possibly empty (the identity)."""
        path = self._path(t)
        if not path or path[-1].t != t:
            raise KeyError(t)
        node = path[-1]
        node.legs.remove(leg)
        _regroup(node)
        self._reset, self._k, self._rel, self._abs = _fix_path(path, t)

    def refresh(self, t: int) -> None:
        """Recompute the group at ``t`` and its ancestors after a leg's ``watched`` changed."""
        path = self._path(t)
        if path and path[-1].t == t:
            _regroup(path[-1])
            self._reset, self._k, self._rel, self._abs = _fix_path(path, t)

    def group(self, t: int) -> list[Leg]:
        """The legs of the group at time ``t``, in their order (empty if none)."""
        path = self._path(t)
        return list(path[-1].legs) if path and path[-1].t == t else []

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
        if t >= self._last:
            return self._k  # at or after the last group: the latest balance
        bal = 0
        n = self._root
        while n is not None:
            if t < n.t:
                n = n.left
                continue
            bal = n.l_k if n.l_reset else bal + n.l_k
            bal = n.g_k if n.g_reset else bal + n.g_k
            n = n.right
        return bal

    def find_negative(self, t: int) -> list[Leg]:
        """Watched depletion legs in groups at time >= ``t`` whose group leaves balance < 0."""
        out: list[Leg] = []
        if self._root is not None and (self._rel < 0 or self._abs < 0):
            _collect(self._root, 0, t, out)
        return out

    def settle(self, horizon: int) -> int:
        """Fold every group before ``horizon`` into one plain leg just before it (their
        balance), and drop them; the legs from ``horizon`` on keep their groups. Balances at
        and after ``horizon - 1`` are unchanged; earlier ones are no longer known. Returns
        the number of groups dropped. O(groups kept)."""
        if self._root is None or self._root_min_time() >= horizon:
            return 0
        base = self.balance_after(horizon - 1)
        kept = list(self._groups_from(horizon))
        dropped = self.groups - len(kept)
        self._root = None
        self._last = -1
        self._reset, self._k, self._rel, self._abs = False, 0, INF, INF
        self.groups = 0
        self.add(Leg(_SETTLED, reset=False, value=base, depletion=False), horizon - 1)
        for t, legs in kept:
            for leg in legs:
                self.add(leg, t)
        return dropped

    def _root_min_time(self) -> int:
        n = self._root
        assert n is not None
        while n.left is not None:
            n = n.left
        return n.t

    def _nodes_from(self, t: int) -> Iterator[_Node]:
        """Every group's node at or after time ``t``, in order, without visiting the earlier
        ones: O(log n) to the first, then O(1) each."""
        stack: list[_Node] = []
        n = self._root
        while stack or n is not None:
            while n is not None:
                if n.t >= t:
                    stack.append(n)
                    n = n.left
                else:
                    n = n.right
            if not stack:
                return
            n = stack.pop()
            yield n
            n = n.right

    def _groups_from(self, t: int) -> Iterator[tuple[int, list[Leg]]]:
        """(time, legs) of every group at or after time ``t``, in order."""
        return ((n.t, n.legs) for n in self._nodes_from(t))

    def posts_after(self, t: int) -> Iterator[tuple[int, int]]:
        """(time, balance right after the group) of every group after time ``t``, in order;
        O(log n) to the first, then O(1) each."""
        bal = self.balance_after(t)
        for n in self._nodes_from(t + 1):  # (times are whole microseconds)
            bal = n.g_k if n.g_reset else bal + n.g_k
            yield n.t, bal

    def walk(self) -> Iterator[tuple[int, list[Leg]]]:
        """Every group (time, legs) in occurrence order; O(n), for tests and diagnostics."""
        return ((n.t, list(n.legs)) for n in self._nodes_from(-(1 << 63)))

    def depth(self) -> int:
        """Nodes on the longest path from the root; for tests."""
        deepest = 0
        stack = [] if self._root is None else [(self._root, 1)]
        while stack:
            n, d = stack.pop()
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (n.left, n.right) if c is not None)
        return deepest


def _collect(n: _Node, x: int, t: int, out: list[Leg]) -> int:
    """Visit the subtree at n, some watched depletion of which is below zero with input
    balance x; return its output balance. A subtree entirely before t, or whose watched
    depletions all stay >= 0, is skipped whole."""
    nt = n.t
    if nt >= t and (x + n.l_nr < 0 or n.l_na < 0):
        assert n.left is not None
        x = _collect(n.left, x, t, out)
    else:
        x = n.l_k if n.l_reset else x + n.l_k
    x = n.g_k if n.g_reset else x + n.g_k
    if n.g_watch and x < 0 and nt >= t:
        out.extend(leg for leg in n.legs if leg.depletion and leg.watched)
    if x + n.r_nr < 0 or n.r_na < 0:
        assert n.right is not None
        return _collect(n.right, x, t, out)
    return n.r_k if n.r_reset else x + n.r_k
