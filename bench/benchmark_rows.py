"""Reading bench/multi_gpu.sh's JSON lines (OUT_DIR/multi_gpu.jsonl): the
file's lines and the checks of a row's GPU count and speed, shared by
bench/multi_gpu_table.py and bench/scaling_model.py so that both refuse the
same damaged rows with the same words."""
import math
import sys


def lines(path):
    """(line number, text) of every non-blank line; one error line and exit 1
    if the file cannot be read."""
    try:
        f = open(path)
    except OSError as e:
        sys.exit(f"error: cannot read {path}: {e.strerror}")
    with f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def check_count(name, value):
    """ValueError unless value is a whole number >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")


def check_speed(tokens_per_s):
    """ValueError unless tokens_per_s is a finite number > 0."""
    if isinstance(tokens_per_s, bool) or not isinstance(tokens_per_s, (int, float)) \
            or not math.isfinite(tokens_per_s) or tokens_per_s <= 0:
        raise ValueError(f"tokens_per_s must be a number > 0, not {tokens_per_s!r}")
