"""Command line: `python -m sagan_jax.main --config=configs/X.py[:arg] --workdir=DIR`.

Config fields are overridden with `--config.section.field=value`; the config is locked,
so a misspelt field stops the run with one line instead of being silently added.
A rerun with the same workdir resumes from its latest checkpoint. The workdir may be a
cloud path (`gs://bucket/run`), the only kind that all hosts of a TPU slice share.

Several processes (GPU nodes): the same command on each, with `--coordinator_address`,
`--num_processes` and `--process_id` (see `sagan_jax.startup`; TPU slices, SLURM and
Open MPI need none of them). SIGTERM (a preempted VM) saves a checkpoint at the step
reached and exits with status 143; the same command resumes.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sagan_jax import startup

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None,
                    "Directory for checkpoints, logs and sample grids (a local path or gs://...).")
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/digits.py or configs/cifar10.py:case=5.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
startup.define_flags()

# Errors a user can cause (bad paths, bad values, a NaN run): shown as their one line.
USER_ERRORS = (ValueError, OSError, FloatingPointError, startup.OtherProcessFailed)
# The exit status of a run stopped by SIGTERM (128 + 15, as if the signal had ended it):
# a loop that restarts the command until it succeeds resumes it.
PREEMPTED_STATUS = 143


def parse_flags(argv):
    """absl's parsing, with errors from the config file or its overrides as one line."""
    try:
        return FLAGS(argv)
    except (KeyError, AttributeError) as e:  # An override of a field the config lacks.
        message = startup.one_line(e)
        bad = message.split("'")[0] if "'" in message else message.split()[0]
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        culprit = next((o for o in overrides if bad in o.split(".")), " ".join(overrides))
        hint = message[message.find("Did you mean"):] if "Did you mean" in message else ""
        startup.exit_with_error(f"unknown config key {culprit}. {hint}".strip())
    except ModuleNotFoundError as e:
        if e.name != "configs":
            raise
        # The config files import their shared vocabulary as the `configs` package.
        startup.exit_with_error("the config file imports the `configs` package, which is "
                                "not on the path: run from the repository's root (the "
                                "folder that holds configs/), or add that folder to "
                                "PYTHONPATH.")
    except (flags.Error, *USER_ERRORS) as e:
        startup.exit_with_error(e)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from sagan_jax import checkpointing, train  # pylint: disable=g-import-not-at-top

    try:
        startup.init(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                     FLAGS.allow_cpu, FLAGS.config.train.compile_cache_dir)
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except checkpointing.Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(PREEMPTED_STATUS)
    except USER_ERRORS as e:
        logging.debug("stopped", exc_info=True)
        startup.exit_with_error(e)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
