"""Scores in a run of two processes against one: the reference statistics that the two
compute together, and every score of `Evaluator.evaluate`.

Two processes on this machine (a localhost coordinator, 2 CPU devices each, collectives
over gloo, as in test_multihost.py) each hold every other one of the 1,797 real digits
from their index, as `sources.process_share` deals a dataset but without dropping the
odd one (899 and 898: the shares end in batches of different sizes), so that the pair
sees the same real images as one process. With the digits net they compute the reference
statistics together, then score two generators: real scans of the asked class with
noise (every score away from its bounds) and the digits test config's SAGAN G at its
initialisation (the sharded generator of training and the score CLI). This process
(4 devices) does the same alone. The helpers are shared with the worker script, which
imports this module.
"""
import functools
import json
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from two_processes import PROCESSES, start_workers

from configs import common, digits
from sagan_jax import gan as gan_lib, parallel, sampling
from sagan_jax.evaluation import digits_net, reference
from sagan_jax.evaluation.evaluator import Evaluator

NUM_SAMPLES = 1000
STATS = ("mu", "sigma", "kid_features", "num_examples", "diversity", "class_diversity",
         "class_mu", "class_sigma")


def configs(stats_dir):
    """The base config's `eval` and `data` sections for the digits net on 16 px digits."""
    c = common.get_base_config()
    c.eval.update(dict(feature_net="digits", batch_size=200, splits=10, stats_dir=stats_dir,
                       kid_subsets=20, kid_subset_size=500))
    c.data.update(dict(name="digits", image_size=16, channels=1))
    return c.eval, c.data


def real_digits():
    """All 1,797 real scans at 16 px, float32 in [-1, 1], and their labels."""
    images, labels = digits_net.real_digits()
    return images.repeat(2, axis=1).repeat(2, axis=2), labels


def share_batches(process_index, process_count, size=64):
    """`real_batches` of a process's share: every `process_count`-th scan from its index,
    in batches of `size` (not the evaluator's)."""
    images, labels = real_digits()
    images, labels = images[process_index::process_count], labels[process_index::process_count]
    return lambda: ({"image": images[i:i + size], "label": labels[i:i + size]}
                    for i in range(0, len(images), size))


def generators(mesh):
    """{name: generate(key, labels)} of the two generators, sharded over `mesh`."""
    images, labels = real_digits()
    by_class = np.stack([images[labels == c][:170] for c in range(10)])

    @functools.partial(jax.jit, out_shardings=parallel.batch_sharding(mesh))
    def scans(key, y):
        pick, noise = jax.random.split(key)
        index = jax.random.randint(pick, y.shape, 0, by_class.shape[1])
        noisy = jnp.asarray(by_class)[y, index] + 0.3 * jax.random.normal(noise, (len(y), 16, 16, 1))
        return jnp.clip(noisy, -1.0, 1.0)

    gan = gan_lib.build(digits.get_config("test"), 10, 1)
    z = jnp.zeros((2, gan.z_dim), jnp.float32)
    variables = jax.device_get(jax.jit(lambda k: gan.generator.init({"params": k}, z,
                                                                    jnp.zeros(2, jnp.int32)))(
        jax.random.key(0)))
    variables = jax.device_put(variables, parallel.replicated_sharding(mesh))
    params = variables.pop("params")
    generate = sampling.make_generate_fn(gan, mesh)
    return {"scans": scans, "sagan": lambda key, y: generate(params, variables, key, y)}


def evaluate_all(ev, num_samples):
    """{generator: {score: value}} with the collapse check's ratios, same key for both."""
    out = {}
    for name, generate in generators(ev.mesh).items():
        scores, diversity = ev.evaluate(generate, 10, num_samples, jax.random.key(7), 0.6)
        out[name] = {**scores, **diversity.to_scalars()}
    return out


def stats_arrays(stats):
    return {name: np.asarray(getattr(stats, name)) for name in STATS}


# One process of the pair. Computes the reference statistics with the other into the
# shared folder, scores the generators, then creates the evaluator twice more: from the
# cache, and with process 1 looking in a folder of its own (empty) while process 0 has
# the file. Records which process wrote which statistics file, in which phase.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    start = time.time()
    repo, out, coordinator, process_id, shared, own, num_samples = sys.argv[1:]
    process_id, num_samples = int(process_id), int(num_samples)
    sys.path[:0] = [repo, os.path.join(repo, "tests")]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from sagan_jax import startup
    startup.init(coordinator, 2, process_id)
    import numpy as np
    import test_multihost_scores as t
    from sagan_jax import parallel
    from sagan_jax.evaluation import reference
    from sagan_jax.evaluation.evaluator import Evaluator

    saves, save, phase = [], reference.ReferenceStats.save, ["computed"]
    def recording_save(self, path):
        saves.append([phase[0], os.fspath(path)])
        save(self, path)
    reference.ReferenceStats.save = recording_save

    def no_data():
        raise AssertionError("the cached statistics should have been used")

    mesh = parallel.create_mesh()
    times = {"start_s": time.time() - start}
    t0 = time.time()
    ev = Evaluator.create(*t.configs(shared), mesh, t.share_batches(process_id, 2))
    times["reference_s"] = time.time() - t0
    t0 = time.time()
    scores = t.evaluate_all(ev, num_samples)
    times["scores_s"] = time.time() - t0
    np.savez(os.path.join(out, f"p{process_id}_stats.npz"), **t.stats_arrays(ev.reference))
    phase[0] = "cached"
    cached = Evaluator.create(*t.configs(shared), mesh, no_data).reference
    phase[0] = "mixed"
    folder = shared if process_id == 0 else own
    mixed = Evaluator.create(*t.configs(folder), mesh, t.share_batches(process_id, 2)).reference
    first = t.stats_arrays(ev.reference)
    same = {f"{which}/{name}": bool(np.array_equal(array, first[name]))
            for which, other in [("cached", cached), ("mixed", mixed)]
            for name, array in t.stats_arrays(other).items()}
    with open(os.path.join(out, f"p{process_id}.json"), "w") as f:
        json.dump({"scores": scores, "saves": saves, "same": same, **times}, f)
""")



def run_pair(tmp_path, num_samples):
    """Starts the two worker processes; returns them and the paths they write."""
    out, shared, own = tmp_path / "out", tmp_path / "shared", tmp_path / "own"
    out.mkdir()
    workers, log = start_workers(tmp_path, WORKER, out,
                                 lambda p: [str(shared), str(own), str(num_samples)])
    return workers, out, shared, own, log


def finish(workers, log, timeout=600):
    """Waits for both workers; fails with their log if one fails or hangs."""
    deadline = time.time() + timeout
    try:
        while any(w.poll() is None for w in workers) and time.time() < deadline:
            time.sleep(0.5)
            assert all(w.poll() in (None, 0) for w in workers), log.read_text()[-4000:]
        assert [w.poll() for w in workers] == [0, 0], log.read_text()[-4000:]
    finally:
        for w in workers:
            w.kill()


@pytest.mark.slow
def test_two_processes_score_as_one(tmp_path):
    started = time.time()
    workers, out, shared, own, log = run_pair(tmp_path, NUM_SAMPLES)
    try:
        # Meanwhile, the reference: one process, 4 devices, all the scans as one share.
        ev = Evaluator.create(*configs(str(tmp_path / "one")), parallel.create_mesh(),
                              share_batches(0, 1))
        one = evaluate_all(ev, NUM_SAMPLES)
    finally:
        finish(workers, log)
    total_s = time.time() - started
    records = [json.loads((out / f"p{p}.json").read_text()) for p in range(PROCESSES)]

    # The statistics: the same on both processes, in the one file that process 0 wrote,
    # loaded from it again, and recomputed where process 1 looked in a folder of its own.
    path = reference.cache_path(str(shared), "digits", configs("")[1])
    own_path = reference.cache_path(str(own), "digits", configs("")[1])
    assert records[0]["saves"] == [["computed", str(path)]]
    assert records[1]["saves"] == [["mixed", str(own_path)]]
    assert [p.name for p in shared.iterdir()] == [path.name]
    for record in records:
        assert all(record["same"].values()), record["same"]
    pair = [dict(np.load(out / f"p{p}_stats.npz")) for p in range(PROCESSES)]
    written = stats_arrays(reference.ReferenceStats.load(path))
    alone = stats_arrays(ev.reference)
    assert int(alone["num_examples"]) == int(pair[0]["num_examples"]) == 1797
    differences = {}
    for name in STATS:
        np.testing.assert_array_equal(pair[0][name], pair[1][name], err_msg=name)
        np.testing.assert_array_equal(pair[0][name], written[name], err_msg=name)
        scale = np.max(np.abs(alone[name]))
        differences[name] = float(np.max(np.abs(pair[0][name] - alone[name])) / scale)
    # Measured: 0 for all (the same features, gathered back in the dataset's order).
    assert max(differences.values()) <= 1e-12, differences

    # The scores: every score and ratio of both generators.
    two = records[0]["scores"]
    assert records[1]["scores"] == two
    worst = 0.0
    for generator, scores in one.items():
        assert set(two[generator]) == set(scores)
        for name, value in scores.items():
            assert two[generator][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (
                generator, name)
            worst = max(worst, abs(two[generator][name] - value) / max(abs(value), 1e-12))
    # Real scans with noise: every score away from its bounds. Measured: FID 7.93,
    # precision 0.955, recall 0.816, coverage 0.811, sample accuracy 0.982.
    scans = one["scans"]
    assert min(scans["FID"], scans["KID"], scans["intra_fid"]) > 1.0
    assert 0.5 < min(scans[n] for n in ("precision", "recall", "coverage", "sample_accuracy"))
    assert max(scans[n] for n in ("precision", "recall", "coverage", "sample_accuracy")) < 1.0
    assert "intra_fid" in one["sagan"] and "sample_accuracy" in one["sagan"]
    print(f"\ntwo processes vs one: reference statistics max relative difference "
          f"{max(differences.values()):.3g}; scores max relative difference {worst:.3g}; "
          "scans G: " + ", ".join(f"{n} {scans[n]:.3g}" for n in (
              "FID", "precision", "recall", "coverage", "sample_accuracy"))
          + f"; SAGAN G FID {one['sagan']['FID']:.4g}; "
          f"worker 0: start {records[0]['start_s']:.1f} s, reference "
          f"{records[0]['reference_s']:.1f} s, scores {records[0]['scores_s']:.1f} s; "
          f"whole test {total_s:.1f} s")
