import numpy as np
import pytest

from router_ml import DataError
from training.data import Outcome, Record, TrafficTable, normalize_prompt, split_table


def _table(prompts):
    return TrafficTable([Record(prompt=p, outcomes={"m": Outcome(quality=1.0)}) for p in prompts])


def test_split_is_deterministic_disjoint_and_complete():
    table = _table([f"prompt {i}" for i in range(1000)])
    a = split_table(table, train_size=300, val_size=0.1, seed=3)
    b = split_table(table, train_size=300, val_size=0.1, seed=3)
    c = split_table(table, train_size=300, val_size=0.1, seed=4)
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.test, c.test)
    assert a.sizes() == {"train": 270, "val": 30, "test": 700}
    everything = np.concatenate([a.train, a.val, a.test])
    assert sorted(everything.tolist()) == list(range(1000))


def test_split_does_not_depend_on_record_order():
    prompts = [f"prompt {i}" for i in range(200)]
    a = split_table(_table(prompts), train_size=0.5, val_size=0, seed=0)
    rev = split_table(_table(prompts[::-1]), train_size=0.5, val_size=0, seed=0)
    assert {prompts[i] for i in a.test} == {prompts[::-1][i] for i in rev.test}


def test_identical_prompts_never_straddle_splits():
    prompts = [f"q{i % 50}" if i % 2 else f"Q{i % 50}  " for i in range(400)]  # normalise to 50 groups
    table = _table(prompts)
    split = split_table(table, train_size=0.3, val_size=0.2, seed=0)
    keys = [{normalize_prompt(prompts[i]) for i in part} for part in (split.train, split.val, split.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


@pytest.mark.parametrize("size", [-1, 2000, 1.5, True])
def test_bad_train_size(size):
    with pytest.raises(DataError, match="train_size"):
        split_table(_table(["a", "b"]), train_size=size)


def _reference_split(texts, train_size, val_size, seed):
    """The split as first written (whole keys, Python sort): the vectorised one must match it exactly."""
    import hashlib

    def ordered(keys, s):
        groups = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        return [groups[k] for k in sorted(groups, key=lambda k: hashlib.sha256(f"{s}:{k}".encode()).digest())]

    def take(groups, n):
        taken, rest = [], []
        for g in groups:
            (taken.extend(g) if len(taken) < n else rest.append(g))
        return taken, rest

    keys = [normalize_prompt(t) for t in texts]
    labelled, rest = take(ordered(keys, seed), train_size)
    val_local, _ = take(ordered([keys[i] for i in labelled], seed + 1), val_size)
    val = np.array(sorted(labelled[i] for i in val_local), dtype=np.int64)
    return np.setdiff1d(np.array(labelled, dtype=np.int64), val), val, np.array(sorted(i for g in rest for i in g))


@pytest.mark.parametrize("seed", [0, 3])
def test_split_matches_the_reference_order_with_duplicate_prompts(seed):
    rng = np.random.default_rng(seed)
    prompts = [f"Prompt  {int(k)}" if rng.random() < 0.5 else f"prompt {int(k)}" for k in rng.integers(0, 700, 2000)]
    split = split_table(_table(prompts), train_size=900, val_size=150, seed=seed)
    for got, want in zip((split.train, split.val, split.test), _reference_split(prompts, 900, 150, seed),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_split_json_names_the_test_rows_and_the_cascade_check_compares_them(tmp_path):
    """Without sample ids split.json listed only nulls, so the cascade's same-split check passed on any split of
    the same size; the test rows (positions among the loaded records) tell two splits apart."""
    import json

    from training.cascade.command import check_split
    from training.checkpoint import write_split

    table = _table([f"prompt {i}" for i in range(200)])  # no sample_id
    split = split_table(table, train_size=0.5, val_size=0.1, seed=0)
    write_split(tmp_path / "split.json", table, split, 0, table.fingerprint())
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["test_sample_ids"] == [None] * len(split.test)
    assert saved["test_rows"] == split.test.tolist()
    checked = check_split(tmp_path, {}, table, split, train_size=0.5, seed=0)
    assert checked["split_json"] == str(tmp_path / "split.json")
    other = split_table(table, train_size=0.5, val_size=0.1, seed=1)
    assert len(other.test) == len(split.test) and not np.array_equal(other.test, split.test)
    with pytest.raises(DataError, match="test records differ"):
        check_split(tmp_path, {}, table, other, train_size=0.5, seed=0)
