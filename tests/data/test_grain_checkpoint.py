"""The grain iterator's position goes into the orbax checkpoint next to the train state, and a
fresh iterator restored from it continues the uninterrupted stream exactly (across epochs)."""
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pojax.data.pipeline import iterator_state, make_dataset, make_iterator, restore_iterator

N, B = 10, 4  # batch 2 straddles the first epoch boundary (examples 8..11 of the stream)


def _iterator(seed=3, shard_index=0, shard_count=1):
    rows = {"x": np.arange(N, dtype=np.int32), "tokens": np.arange(N * 2, dtype=np.int32).reshape(N, 2)}
    return make_iterator(make_dataset(rows, batch_size=B, seed=seed, shard_index=shard_index,
                                      shard_count=shard_count))


def _manager(directory):
    # as pojax/train/checkpoint.py: async saves, so the handler must capture the state at save()
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    return ocp.CheckpointManager(directory, options=options)


def _assert_same(batches, expected):
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected):
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("k", [2, 3])  # resumes on either side of the epoch boundary
@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_resume_with_grain_handler_in_composite(tmp_path, k, shard):
    n = 8  # 3.2 epochs
    it = _iterator(shard_index=shard[0], shard_count=shard[1])
    expected = [next(it) for _ in range(n)]

    it = _iterator(shard_index=shard[0], shard_count=shard[1])
    head = [next(it) for _ in range(k)]
    train_state = {"w": np.arange(3, dtype=np.float32)}
    manager = _manager(tmp_path)
    manager.save(k, args=ocp.args.Composite(state=ocp.args.StandardSave(train_state),
                                            meta=ocp.args.JsonSave({"step": k}),
                                            data=grain.checkpoint.CheckpointSave(it)))
    tail = [next(it) for _ in range(n - k)]  # the run goes on while the save completes
    manager.wait_until_finished()
    _assert_same(head + tail, expected)

    fresh = _iterator(shard_index=shard[0], shard_count=shard[1])
    abstract = {"w": ocp.utils.to_shape_dtype_struct(train_state["w"])}
    out = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore(),
        data=grain.checkpoint.CheckpointRestore(fresh)))
    manager.close()
    assert out.meta == {"step": k} and out.data is fresh
    np.testing.assert_array_equal(out.state["w"], train_state["w"])
    assert iterator_state(fresh) == {"next_index": k}
    _assert_same([next(fresh) for _ in range(n - k)], expected[k:])


def test_resume_with_json_state(tmp_path):
    n, k = 7, 2
    it = _iterator()
    expected = [next(it) for _ in range(n)]
    it = _iterator()
    [next(it) for _ in range(k)]
    manager = _manager(tmp_path)
    manager.save(k, args=ocp.args.Composite(meta=ocp.args.JsonSave({"step": k}),
                                            data=ocp.args.JsonSave(iterator_state(it))))
    next(it)  # moves on before the async save finishes; the checkpoint keeps position k
    manager.wait_until_finished()
    out = manager.restore(k, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
    manager.close()
    fresh = restore_iterator(_iterator(), out.data)
    _assert_same([next(fresh) for _ in range(n - k)], expected[k:])

