"""The seed tutorial's Keras pipeline, timed per phase. Run in its own process by seed_vs_keras.py.

Usage: python benchmarks/_keras_seed.py DATA_DIR EPOCHS BATCH_SIZE  -> one JSON line on stdout.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def main() -> None:
    data, epochs, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    t0 = time.perf_counter()
    x_train = np.loadtxt(os.path.join(data, "input.csv"), delimiter=",")
    y_train = np.loadtxt(os.path.join(data, "labels.csv"), delimiter=",")
    x_test = np.loadtxt(os.path.join(data, "input_test.csv"), delimiter=",")
    y_test = np.loadtxt(os.path.join(data, "labels_test.csv"), delimiter=",")
    side = int(round((x_train.shape[1] / 3) ** 0.5))
    x_train = x_train.reshape(len(x_train), side, side, 3) / 255.0
    x_test = x_test.reshape(len(x_test), side, side, 3) / 255.0
    load_s = time.perf_counter() - t0

    import tensorflow as tf
    from tensorflow.keras import Sequential
    from tensorflow.keras.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D

    tf.keras.utils.set_random_seed(0)
    model = Sequential([
        Input((side, side, 3)),
        Conv2D(32, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Conv2D(32, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(64, activation="relu"),
        Dense(1, activation="sigmoid"),
    ])
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss, acc = model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)
    eval_s = time.perf_counter() - t0
    print(json.dumps({
        "peer": "keras", "version": tf.__version__, "n_train": len(x_train), "n_test": len(x_test),
        "load_s": load_s, "train_s": train_s, "eval_s": eval_s, "test_accuracy": float(acc), "test_loss": float(loss),
        "params": int(model.count_params()),
    }))


if __name__ == "__main__":
    main()
