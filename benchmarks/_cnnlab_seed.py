"""cnnlab's side of the seed benchmark, timed per phase in its own process.

Usage: python benchmarks/_cnnlab_seed.py DATA_DIR EPOCHS BATCH_SIZE MODEL OUT_DIR -> one JSON line.
CNNLAB_CACHE is set by the caller: a fresh folder measures the first CSV read, a warm one the cached read.
"""

import json
import sys
import time

import cnnlab
from cnnlab.api import load
from cnnlab.engine.inference import evaluate_arrays


def main() -> None:
    data, epochs, batch_size, model_name, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    t0 = time.perf_counter()
    ds = cnnlab.load_dataset(data, val_split=0)
    load_s = time.perf_counter() - t0
    model = cnnlab.create_model(model_name, ds, seed=0)
    run = cnnlab.train(model, ds, epochs=epochs, batch_size=batch_size, val_split=0, out=out, overwrite=True, quiet=True)
    train_s = sum(r["seconds"] for r in run.history)
    clf = load(run)
    test = ds.splits["test"]
    t0 = time.perf_counter()
    ev = evaluate_arrays(clf.model, test.x, test.y, clf.meta["normalization"], clf.device, "fp32", batch_size)
    eval_s = time.perf_counter() - t0
    print(json.dumps({
        "peer": "cnnlab", "version": cnnlab.__version__, "model": model_name, "n_train": len(ds.train), "n_test": len(test),
        "load_s": load_s, "train_s": train_s, "eval_s": eval_s, "test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
        "params": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
