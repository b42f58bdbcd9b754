"""The cardinality guard: which groups a bounded output shows, and what it folds into ``other``.

Both bounded outputs use it: ``/metrics`` (at most ``DESKPULSE_MAX_SERIES_PER_METRIC``
series per metric family, counted as the exposition holds them) and the KPI topic (at most
``DESKPULSE_MAX_SNAPSHOT_MESSAGES`` messages per snapshot). Pure: no I/O, no clock.

The unit of the budget is a *label set* (one group in one view, e.g. one window) that costs
``series`` lines of output: 1 for a gauge, counter or topic message, the quantiles plus
``_count`` and ``_sum`` for a summary, every bucket plus ``_count`` and ``_sum`` for a
histogram. A family only spends budget on the groups it has series for (a ratio with no
samples is left out, so it costs nothing): :attr:`Rule.requires` names the fields one of
which must be positive.

Groups are ranked once per view by how many samples they hold (ties by key, so the choice
is stable from one refresh to the next); a rule keeps the largest of its groups that fit,
and sums the rest into one ``other`` group, so totals over groups stay exact. Because a
rule's fields are all zero in the groups it has no series for, the ``other`` of every rule
is a plain suffix sum of the ranking: one backward walk per view serves them all.

``/metrics`` folds each kind of family (windowed, cumulative) with one rule, the costliest
label set of the kind, so every family of a kind shows the same groups; the KPI topic
folds with ``Rule(1)``.

A refresh every few seconds folds thousands of groups of which a few hundred moved:
:class:`Guard` is :func:`guard` of one such rule kept from one fold to the next, each
group's rank and presence worked out again only when its dict changed, the ``other`` sums
moved by the groups that changed or crossed the cut.

Over all families together, ``/metrics`` also holds ``DESKPULSE_MAX_SERIES``: :func:`share`
splits that total between the views of every kind (each window of the windowed families,
the state families, the cumulative ones), a label set of a view counted at the most series
it can have there, and caps each view at what it got (``guard(..., caps=...)``).
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "OTHER",
    "VOLUME_FIELDS",
    "Fold",
    "Guard",
    "Rule",
    "allocate",
    "count_present",
    "fold_view",
    "guard",
    "needs",
    "rank",
    "share",
    "volume",
]

#: The key of the group the folded ones are summed into. Its priority, ``other``, is not a
#: priority an event can carry, so it never stands for a real group.
OTHER: tuple[str, str, str] = ("other", "other", "other")

#: Fields counting samples: their sum is a group's size in the ranking.
VOLUME_FIELDS: tuple[str, ...] = ("tc", "cr", "fr", "ca", "cab", "cs", "cs_n", "np_n", "ce_n")

Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """How a family spends the budget: series per label set, and when it has any.

    ``requires`` empty means every group of the view has series.
    """

    series: int
    requires: tuple[str, ...] = ()

    def present(self, fields: Mapping[str, int]) -> bool:
        return not self.requires or any(fields.get(name, 0) > 0 for name in self.requires)


@dataclass(frozen=True, slots=True)
class Fold:
    """What one rule shows of one view."""

    #: groups shown as themselves, largest first
    kept: tuple[Key, ...]
    #: summed fields of the groups folded (exact for the rule's own fields), or None
    other: dict[str, int] | None
    #: groups with series that were folded into ``other``
    folded: int


def volume(fields: Mapping[str, int]) -> int:
    """How many samples a group holds (its rank)."""
    total = 0
    for value in map(fields.get, VOLUME_FIELDS):
        if value is not None and value > 0:
            total += value
    return total


def _presence(rules: Sequence[Rule]) -> list[frozenset[str]]:
    """Each rule's fields as a set (empty: every group has its series)."""
    return [frozenset(rule.requires) for rule in rules]


def _present(fields: Mapping[str, int], requires: Sequence[frozenset[str]]) -> list[bool]:
    """Whether each rule has series for a group (:meth:`Rule.present` for all of them at
    once: the group's positive fields are found once, not once per rule)."""
    positive = {name for name, value in fields.items() if value > 0}
    return [not names or not positive.isdisjoint(names) for names in requires]


def rank(groups: Mapping[Key, Mapping[str, int]]) -> list[Key]:
    """Keys, largest group first; equal sizes in key order."""
    return sorted(groups, key=lambda key: (-volume(groups[key]), key))


def allocate(needs: Sequence[int], budget: int) -> list[int]:
    """Share ``budget`` label sets among views that need ``needs``; what each gets.

    Water-filling: a view needing less than an even share leaves the rest to the others
    (a 5-minute window with few groups lends its share to the 24-hour one). A view that
    needs any gets at least one label set (its ``other``), even past the budget.
    """
    given = [0] * len(needs)
    left = budget
    order = sorted(range(len(needs)), key=lambda i: needs[i])
    for n, i in enumerate(order):
        if needs[i] <= 0:
            continue
        share = left // (len(needs) - n)
        given[i] = min(needs[i], max(1, share))
        left = max(0, left - given[i])
    return given


def share(needs: Sequence[int], costs: Sequence[int], budget: int) -> list[int]:
    """Label sets per view when views needing ``needs`` label sets, one of view ``v``
    costing ``costs[v]`` series, share ``budget`` series.

    Water-filling in series (:func:`allocate`): a view needing less than an even share of
    the series leaves the rest to the others. A view that needs any gets at least one label
    set (its ``other``), even past the budget.
    """
    given = allocate([n * c for n, c in zip(needs, costs, strict=True)], budget)
    return [
        0 if n <= 0 else max(1, min(n, g // c)) for n, c, g in zip(needs, costs, given, strict=True)
    ]


def needs(
    groups: Mapping[Key, Mapping[str, int]], order: Sequence[Key], rules: Sequence[Rule]
) -> list[list[int]]:
    """For each rule, the positions in ``order`` of the groups it has series for."""
    positions: list[list[int]] = [[] for _ in rules]
    requires = _presence(rules)
    for position, key in enumerate(order):
        for found, present in zip(positions, _present(groups[key], requires), strict=True):
            if present:
                found.append(position)
    return positions


def count_present(
    groups: Mapping[Key, Mapping[str, int]], kept: Sequence[Key], rules: Sequence[Rule]
) -> list[int]:
    """For each rule, how many of the groups not ``kept`` it has series for."""
    shown = set(kept)
    counts = [0] * len(rules)
    requires = _presence(rules)
    for key, fields in groups.items():
        if key in shown:
            continue
        for r, present in enumerate(_present(fields, requires)):
            counts[r] += present
    return counts


def fold_view(
    groups: Mapping[Key, Mapping[str, int]],
    order: Sequence[Key],
    present: Sequence[Sequence[int]],
    label_sets: Sequence[int],
) -> list[Fold]:
    """Fold one view for each rule, given its present positions and label sets granted.

    ``present[r]`` comes from :func:`needs`; a rule granted fewer label sets than it has
    groups keeps ``label_sets[r] - 1`` of them and folds the rest into ``other``.
    """
    cuts: dict[int, int] = {}  # rule -> first position folded
    for r, (positions, granted) in enumerate(zip(present, label_sets, strict=True)):
        if len(positions) > granted:
            cuts[r] = positions[max(0, granted - 1)]
    suffix: dict[int, dict[str, int]] = {}
    if cuts:
        # one backward walk; a copy of the running sum at each cut
        running: dict[str, int] = {}
        wanted = sorted(set(cuts.values()), reverse=True)
        position = len(order)
        for cut in wanted:
            while position > cut:
                position -= 1
                for name, value in groups[order[position]].items():
                    running[name] = running.get(name, 0) + value
            suffix[cut] = dict(running)
    folds: list[Fold] = []
    for r, positions in enumerate(present):
        if r not in cuts:
            folds.append(Fold(tuple(order[p] for p in positions), None, 0))
            continue
        keep = max(0, label_sets[r] - 1)
        folds.append(
            Fold(
                tuple(order[p] for p in positions[:keep]),
                suffix[cuts[r]],
                len(positions) - keep,
            )
        )
    return folds


def guard(
    views: Sequence[Mapping[Key, Mapping[str, int]]],
    rules: Sequence[Rule],
    budget: int,
    caps: Sequence[int] | None = None,
) -> list[list[Fold]]:
    """Fold every view for every rule: ``folds[view][rule]``.

    Each rule may spend ``budget`` series over all views together (``budget //
    rule.series`` label sets, shared by :func:`allocate`); ``caps[v]``, when given, is the
    most label sets view ``v`` may show for any rule (at least one: its ``other``).
    """
    orders = [rank(view) for view in views]
    present = [needs(view, order, rules) for view, order in zip(views, orders, strict=True)]
    granted = [
        allocate([len(p[r]) for p in present], budget // rule.series)
        for r, rule in enumerate(rules)
    ]
    if caps is not None:
        granted = [
            [min(given, max(1, cap)) for given, cap in zip(row, caps, strict=True)]
            for row in granted
        ]
    return [
        fold_view(view, order, present[v], [granted[r][v] for r in range(len(rules))])
        for v, (view, order) in enumerate(zip(views, orders, strict=True))
    ]


class Guard:
    """:func:`guard` of one ``rule`` that every group has series for, kept from one call to
    the next: ``fold(views, ...)`` gives what ``guard(views, [rule], ...)`` gives, each
    view's ``other`` a dict of its nonzero sums.

    A group's rank and presence are worked out again only when its dict changed (told by
    identity, then equality: the reads hand the same dict for a group nothing moved), and
    each view's ``other`` is moved by the groups that changed, left or crossed the cut
    rather than summed again; the groups shown are ranked from the last fold's (those
    that stayed put merged with those placed anew) while that tells. A fold costs a pass
    over the keys plus the changes. The groups' dicts are read only, here as everywhere.
    """

    def __init__(self, rule: Rule, counted: Sequence[Rule] = ()) -> None:
        if rule.requires:
            raise ValueError("Guard folds by a rule every group has series for")
        self.rule = rule
        #: the rules :meth:`folded_present` counts
        self.counted = tuple(counted)
        always = 0
        bits: dict[str, int] = {}
        for r, counted_rule in enumerate(self.counted):
            if not counted_rule.requires:
                always |= 1 << r
            for name in counted_rule.requires:
                bits[name] = bits.get(name, 0) | 1 << r
        self._always, self._bits = always, bits
        self._views: list[_Ranked] = []

    def fold(
        self,
        views: Sequence[Mapping[Key, Mapping[str, int]]],
        budget: int,
        caps: Sequence[int] | None = None,
    ) -> list[Fold]:
        """:func:`guard` ``(views, [rule], budget, caps)``, one fold per view."""
        granted = allocate([len(view) for view in views], budget // self.rule.series)
        if caps is not None:
            granted = [min(given, max(1, cap)) for given, cap in zip(granted, caps, strict=True)]
        del self._views[len(views) :]
        while len(self._views) < len(views):
            self._views.append(_Ranked())
        return [
            ranked.fold(view, given, self._mask)
            for ranked, view, given in zip(self._views, views, granted, strict=True)
        ]

    def folded_present(self, view: int) -> list[int]:
        """For each counted rule, how many groups of view ``view``'s last fold went into its
        ``other`` that the rule has series for (:func:`count_present` of them)."""
        ranked = self._views[view]
        masks = ranked.masks - Counter(ranked.mask_of[key] for key in ranked.kept)
        return [
            sum(count for mask, count in masks.items() if mask >> r & 1)
            for r in range(len(self.counted))
        ]

    def _mask(self, fields: Mapping[str, int]) -> int:
        """Which counted rules have series for a group: bit ``r`` for ``counted[r]``."""
        mask = self._always
        for name in self._bits.keys() & fields.keys():
            if fields[name] > 0:
                mask |= self._bits[name]
        return mask


class _Ranked:
    """One view of a :class:`Guard` as of its last fold."""

    __slots__ = ("fields", "kept", "mask_of", "masks", "other", "place", "ranked", "whole")

    def __init__(self) -> None:
        # per group: its dict, its place in the ranking, its presence mask (dicts of their
        # own, not one more tuple a group for the garbage collector to walk)
        self.fields: dict[Key, Mapping[str, int]] = {}
        self.place: dict[Key, tuple[int, Key]] = {}
        self.mask_of: dict[Key, int] = {}
        #: the groups shown as themselves (the rest are in ``other``)
        self.kept: frozenset[Key] = frozenset()
        #: groups per presence mask, every group of the view
        self.masks: Counter[int] = Counter()
        #: the nonzero sums of the groups of ``fields`` not ``kept``
        self.other: dict[str, int] = {}
        #: the places in the ranking of the ``kept`` groups, in order; whether they were
        #: every group of the view
        self.ranked: list[tuple[int, Key]] = []
        self.whole = True

    def fold(
        self,
        view: Mapping[Key, Mapping[str, int]],
        granted: int,
        mask_of: Callable[[Mapping[str, int]], int],
    ) -> Fold:
        """The view folded with ``granted`` label sets, from the last fold and what moved."""
        seen, place_of, masks_of = self.fields, self.place, self.mask_of
        kept, masks, other = self.kept, self.masks, self.other
        # the groups whose dict is new, and their dict of the last fold (None: a new group);
        # those whose place in the ranking moved (or is new), and those gone
        moved: dict[Key, Mapping[str, int] | None] = {}
        placed: list[Key] = []
        gone: set[Key] = set()
        for key, fields in view.items():
            before = seen.get(key)
            if before is not None:
                if before is fields:
                    continue
                seen[key] = fields
                if before == fields:
                    continue
                masks[masks_of[key]] -= 1
            else:
                seen[key] = fields
            mask = masks_of[key] = mask_of(fields)
            masks[mask] += 1
            place = (-volume(fields), key)
            if before is None or place_of[key] != place:
                place_of[key] = place
                placed.append(key)
            moved[key] = before
        if len(seen) > len(view):  # groups gone from the view
            gone = seen.keys() - view.keys()
            for key in gone:
                fields = seen.pop(key)
                del place_of[key]
                masks[masks_of.pop(key)] -= 1
                if key not in kept:
                    _add(other, fields, -1)
        keep = len(seen)
        if keep > granted:
            keep = max(0, granted - 1)
        ranked = self._rank(keep, placed, gone)
        order = [key for _, key in ranked]
        now = frozenset(order)
        for key in kept - now:
            if key in seen and key not in moved:  # left the kept groups: into other
                _add(other, seen[key], 1)
        for key in now - kept:
            if key not in moved:  # joined them: out of other
                _add(other, seen[key], -1)
        for key, before in moved.items():
            if before is None or key in kept:  # new, or shown: not in other before
                if key not in now:
                    _add(other, seen[key], 1)
            elif key in now:
                _add(other, before, -1)
            else:
                _move(other, before, seen[key])
        self.kept, self.ranked, self.whole = now, ranked, len(order) == len(seen)
        if len(order) == len(seen):
            return Fold(tuple(order), None, 0)
        return Fold(tuple(order), dict(other), len(seen) - len(order))

    def _rank(self, keep: int, placed: list[Key], gone: set[Key]) -> list[tuple[int, Key]]:
        """The places of the ``keep`` first groups in the ranking, in order.

        From the last fold's first ones while they tell: every group not among them that
        kept its place is past the last of them, so once ``keep`` of the last first ones
        that stayed put and the groups ``placed`` anew come before it (or they were the
        whole view), the first ``keep`` of those are the first of all. Otherwise every
        group is ranked again.
        """
        places, last = self.place, self.ranked
        if not placed and not gone and keep == len(last):
            return last
        stale = gone.union(placed)
        # two sorted runs, merged by the sort
        merged = sorted(
            [place for place in last if place[1] not in stale]
            + sorted(places[key] for key in placed)
        )
        if self.whole or (last and bisect.bisect_right(merged, last[-1]) >= keep):
            return merged[:keep]
        if keep * 4 < len(places):  # a few of many: a heap beats sorting them all
            return heapq.nsmallest(keep, places.values())
        return sorted(places.values())[:keep]


def _move(sums: dict[str, int], before: Mapping[str, int], after: Mapping[str, int]) -> None:
    """``sums`` with a group's fields ``before`` replaced by ``after`` (most are alike: a
    few hundred events move a field or two of each group they touch)."""
    for name, value in after.items():
        was = before.get(name, 0)
        if value != was:
            total = sums.get(name, 0) + value - was
            if total:
                sums[name] = total
            else:
                sums.pop(name, None)
    if not before.keys() <= after.keys():
        _add(sums, {name: before[name] for name in before.keys() - after.keys()}, -1)


def _add(sums: dict[str, int], fields: Mapping[str, int], sign: int) -> None:
    """``sums`` plus ``sign`` times ``fields``, a sum that comes to 0 taken out."""
    for name, value in fields.items():
        total = sums.get(name, 0) + sign * value
        if total:
            sums[name] = total
        else:
            sums.pop(name, None)
