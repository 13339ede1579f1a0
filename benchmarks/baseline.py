"""The bare tutorial: what a user would write instead of this project, timed.

Loads the same MNIST arrays, builds the tutorial network with the same params and seed, trains
20 epochs at batch 500 with a 10% validation split, evaluates on the test set. Prints JSON.
Run: python benchmarks/baseline.py /path/to/mnist.npz
"""

import json
import sys
import time

started = time.perf_counter()
import keras  # noqa: E402
import numpy as np  # noqa: E402

imported = time.perf_counter()
with np.load(sys.argv[1]) as data:
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = data["x_test"], data["y_test"]
x_train = x_train.astype("float32") / 255
x_test = x_test.astype("float32") / 255
y_train = keras.utils.to_categorical(y_train, 10)
y_test = keras.utils.to_categorical(y_test, 10)

keras.utils.set_random_seed(42)
model = keras.Sequential(
    [
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(784, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.01),
    loss="categorical_crossentropy",
    metrics=["accuracy"],
)
# A probe for benchmarks/run.py, which times this line's arrival: when the first epoch begins.
probe = keras.callbacks.LambdaCallback(
    on_epoch_begin=lambda epoch, logs: epoch or print("first epoch begins", file=sys.stderr)
)
fit_started = time.perf_counter()
history = model.fit(
    x_train,
    y_train,
    batch_size=500,
    epochs=20,
    validation_split=0.1,
    verbose=0,
    callbacks=[probe],
)
fit_s = time.perf_counter() - fit_started
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(
    json.dumps(
        {
            "import_s": imported - started,
            "fit_s": fit_s,
            "samples_trained": int(len(x_train) * 0.9) * 20,
            "test_accuracy": accuracy,
            "test_loss": loss,
            "total_s": time.perf_counter() - started,
        }
    )
)
