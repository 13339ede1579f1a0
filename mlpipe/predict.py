"""Classify image files with a trained model.

    python -m mlpipe.predict digit.png [more.png ...] [--top 3] [--json]
        [--model models:/keras-tutorial-mnist@champion | path/to/model.keras]
        [--dataset mnist]

By default the model is the champion of the dataset named in params.yaml. Images may be PNG,
JPEG or TIFF of any size and depth; for 28x28 models they are converted as MNIST was made (see
mlpipe.inference.images). Every file is checked before the model loads, so a bad one fails
fast; then the images are decoded one at a time and predicted in chunks, so memory stays flat
however many files are given. A model whose outputs do not match the dataset's classes, or
hold NaN or infinite values, is refused. File names are printed with control characters and
undecodable bytes escaped (in JSON, as JSON escapes them).
Exit codes: 0 done; 1 a bad image or model; 2 bad arguments; 130 interrupted; 143
terminated (its temp files removed either way).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
import unicodedata
from pathlib import Path

from mlpipe.config import DATASETS
from mlpipe.data.specs import SPECS
from mlpipe.errors import ConfigError, PipelineError, Terminated, redact
from mlpipe.inference.classify import Prediction, classify
from mlpipe.inference.images import ImageInputError, check_image
from mlpipe.inference.model_source import default_model_uri, load_model
from mlpipe.model.loading import check_output_count
from mlpipe.paths import HERE, Layout
from mlpipe.runner import DEBUG_ENV, EXIT_INTERRUPTED, EXIT_TERMINATED, exit_without_collecting

log = logging.getLogger("predict")
# Characters that must never reach a terminal raw: controls (newline, escape), format
# characters (bidirectional overrides), surrogates and line or paragraph separators.
ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


def printable(text: str) -> str:
    """`text` with control characters and undecodable bytes escaped, so that a file name can
    neither break an output line nor send escape codes to the terminal."""
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if unicodedata.category(char) in ESCAPED_CATEGORIES:
        return char.encode("unicode_escape").decode("ascii")
    return char


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipe.predict", description="Classify image files with a trained model."
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, TIFF, ...)")
    parser.add_argument(
        "--model", help="an MLflow model URI or a .keras file (default: the champion)"
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, help="the classes the model predicts (default: params.yaml)"
    )
    parser.add_argument("--top", type=int, default=1, help="how many classes to show per image")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error(f"--top must be between 1 and 10 (got {args.top})")
    return args


def run(args: argparse.Namespace, layout: Layout) -> tuple[list[Prediction], str]:
    """Check every image, load the model, check it fits the dataset, then classify; the
    predictions and which model made them."""
    default_uri, dataset = default_model_uri(layout, args.dataset)
    spec = SPECS[dataset]
    # Check every image before paying for the model, keeping no pixels: a bad file fails fast.
    for path in args.images:
        check_image(path)
    source = args.model or default_uri
    model, model_label = load_model(layout, source)
    check_output_count(model, spec.num_classes, source, "pick the model's dataset with --dataset")
    return classify(model, args.images, spec.class_names, args.top, source), model_label


def show(results: list[Prediction], model_label: str, as_json: bool) -> None:
    """Print the results and which model gave them (on standard error in text, so standard
    output stays one line per file); names are escaped (by JSON itself in --json)."""
    if as_json:
        rows = [
            {
                "file": r.file,
                "label": r.top[0][0],
                "probability": r.top[0][1],
                "top": [{"label": label, "probability": p} for label, p in r.top],
                "model": model_label,
            }
            for r in results
        ]
        print(json.dumps(rows, indent=2))
        return
    print(f"model: {printable(model_label)}", file=sys.stderr)
    for r in results:
        shown = ", ".join(f"{label} ({p:.1%})" for label, p in r.top)
        print(f"{printable(r.file)}: {shown}")


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(f"received signal {signum}")


def main(argv: list[str] | None = None, layout: Layout | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's INFO lines (an artifact download's) would come before our one line.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    # Temp files go on SIGTERM, as on Ctrl-C (a handler can be set in the main thread only).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        results, model_label = run(args, layout or HERE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED
    except (PipelineError, ImageInputError) as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc(file=sys.stderr)
        # Escaping keeps it one line: a newline in a file name prints as \n.
        print(f"error: {printable(redact(str(exc)))}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    show(results, model_label, args.json)
    return 0


if __name__ == "__main__":
    exit_without_collecting(main())
