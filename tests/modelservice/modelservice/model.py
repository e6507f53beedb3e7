"""The iris classifier that onnxruntime ships in its wheel (no download), served the way the
README's "Serving a model" says.

- Its file is read when the app is made: with PRELOAD_APP=true, once, in gunicorn's master,
  with numpy and onnxruntime imported, all shared by the forked workers. (onnxruntime starts
  no thread when imported because the stack's image sets ORT_DISABLE_TELEMETRY=1.)
- Its onnxruntime session is made in each worker (`post_fork`): onnxruntime starts the
  session's thread pool when it makes the session, and a forked worker has none of the
  master's threads. The pool has OMP_NUM_THREADS threads (the stack sets it: usable CPUs
  per worker), which onnxruntime does not read by itself.
- Then the worker warms the model up (a first inference), and its /readyz answers 503 until
  that is done (`readiness_check`, in create_app). MODEL_WARMUP_SECONDS, the example's own
  variable, adds that many seconds, as a large model's warm-up would take.
- `classify` runs on a batch of inputs (`@batched` in create_app). The model was exported for
  a fixed batch of 3 rows of 2 numbers, so a batch is fed to it 3 rows at a time, the last
  row repeated to fill the last 3.
"""

import os
import threading
import time

import numpy
import onnxruntime
from onnxruntime.datasets import get_example

from deploy import in_os_thread

MODEL_FILE = "logreg_iris.onnx"


class IrisModel:
    def __init__(self):
        with open(get_example(MODEL_FILE), "rb") as f:
            self.onnx = f.read()
        self.session: onnxruntime.InferenceSession | None = None
        self.warmed_up = False

    def start(self) -> None:
        """In each worker, before it serves: its session, and its warm-up in the background."""
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
        [model_input] = self.session.get_inputs()
        self.input_name = model_input.name
        self.rows, self.features = model_input.shape
        # A thread: under gunicorn's gevent worker a greenlet, which does not hold the worker's start.
        threading.Thread(target=self.warm_up, name="warm-up", daemon=True).start()

    def warm_up(self) -> None:
        in_os_thread(self.classify, [[5.0] * self.features] * self.rows)
        time.sleep(float(os.environ.get("MODEL_WARMUP_SECONDS", "0")))
        self.warmed_up = True

    def classify(self, inputs: list[list[float]]) -> list[int]:
        """The label of each input (a list of `features` numbers), in order."""
        rows = numpy.array(inputs, dtype=numpy.float32)
        padding = -len(rows) % self.rows
        rows = numpy.concatenate([rows, numpy.repeat(rows[-1:], padding, axis=0)])
        labels = [self.session.run(["label"], {self.input_name: rows[start:start + self.rows]})[0]
                  for start in range(0, len(rows), self.rows)]
        return numpy.concatenate(labels)[:len(inputs)].tolist()
