"""The cardinality guard's counting, and the guard kept from fold to fold, against the plain
definitions they speed up."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deskpulse.exporters.cardinality import (
    VOLUME_FIELDS,
    Guard,
    Rule,
    count_present,
    guard,
    needs,
    rank,
    volume,
)

NAMES = [*VOLUME_FIELDS, "ca_in", "cs_sat", "fr_sk:3"]
groups_strategy = st.dictionaries(
    st.tuples(st.sampled_from("ab"), st.sampled_from("xyz"), st.sampled_from("12")),
    st.dictionaries(st.sampled_from(NAMES), st.integers(-3, 5), max_size=8),
    max_size=12,
)
rules_strategy = st.lists(
    st.builds(
        Rule,
        st.integers(1, 4),
        st.lists(st.sampled_from(NAMES), max_size=3, unique=True).map(tuple),
    ),
    min_size=1,
    max_size=5,
)


@given(groups=groups_strategy, rules=rules_strategy, kept_count=st.integers(0, 12))
def test_presence_and_volume_are_the_rules_and_sums_they_stand_for(
    groups: dict[tuple[str, ...], dict[str, int]], rules: list[Rule], kept_count: int
) -> None:
    """A group's volume is the sum of its positive sample counts; a rule has series for a
    group when one of its fields is positive (or it names none), counted per rule."""
    for fields in groups.values():
        assert volume(fields) == sum(max(0, fields.get(name, 0)) for name in VOLUME_FIELDS)
    order = rank(groups)
    assert needs(groups, order, rules) == [
        [p for p, key in enumerate(order) if rule.present(groups[key])] for rule in rules
    ]
    kept = order[:kept_count]
    assert count_present(groups, kept, rules) == [
        sum(1 for key, fields in groups.items() if key not in kept and rule.present(fields))
        for rule in rules
    ]


# one step of a view's life between two folds: each group's dict kept (the same object),
# replaced by an equal one, replaced by other fields, or dropped; new groups added
_steps = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["same", "equal", "changed", "gone"]), max_size=12),
        groups_strategy,
        st.integers(1, 14),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60)
@given(
    first=st.lists(groups_strategy, min_size=1, max_size=3),
    steps=_steps,
    counted=rules_strategy,
    series=st.integers(1, 3),
    budget=st.integers(0, 40),
)
def test_the_kept_guard_folds_as_the_guard_does_fold_after_fold(
    first: list[dict[tuple[str, ...], dict[str, int]]],
    steps: list[tuple[list[str], dict[tuple[str, ...], dict[str, int]], int]],
    counted: list[Rule],
    series: int,
    budget: int,
) -> None:
    """Fold after fold, with groups moving, staying put (the same dict or an equal one),
    leaving and arriving (ranks crossing the cut both ways), :class:`Guard` keeps and
    folds what :func:`guard` does over the same views, its ``other`` the same sums (its
    zeros left out), and counts what :func:`count_present` counts of the groups folded."""
    rule = Rule(series)
    kept_guard = Guard(rule, counted)
    views = first
    for fates, new, cap in [([], {}, 40), *steps]:
        moved: list[dict[tuple[str, ...], dict[str, int]]] = []
        for view in views:
            after: dict[tuple[str, ...], dict[str, int]] = {}
            for index, (key, fields) in enumerate(view.items()):
                fate = fates[index] if index < len(fates) else "same"
                if fate == "equal":
                    after[key] = dict(fields)
                elif fate == "changed":
                    after[key] = {**fields, "tc": fields.get("tc", 0) + index + 1}
                elif fate == "same":
                    after[key] = fields
            moved.append({**after, **{k: f for k, f in new.items() if k not in after}})
        views = moved
        caps = [cap - v for v in range(len(views))]
        expected = [fold for (fold,) in guard(views, [rule], budget, caps)]
        got = kept_guard.fold(views, budget, caps)
        for v, (view, want, fold) in enumerate(zip(views, expected, got, strict=True)):
            assert fold.kept == want.kept
            assert fold.folded == want.folded
            if want.other is None:
                assert fold.other is None
            else:
                assert fold.other == {k: n for k, n in want.other.items() if n}
            assert kept_guard.folded_present(v) == count_present(view, want.kept, counted)


def test_the_kept_guard_takes_only_a_rule_every_group_has_series_for() -> None:
    with pytest.raises(ValueError, match="every group"):
        Guard(Rule(1, ("fr",)))
