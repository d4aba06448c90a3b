"""timm (PyTorch) as a third peer of the training step, in a child process driven call by call.

PyTorch and TensorFlow do not share a process safely (with TensorFlow 2.21 imported first,
torch 2.14 crashed the interpreter: a segfault), so `TimmPeer` starts `python timm_peer.py --serve`
and sends it one JSON line per request; each timed call is one request and its reply, so
the figures include a pipe round trip (0.09 ms measured). The parent still interleaves timm
with the Keras paths round by round, like every other path.

Optional: torch and timm are in no extra (PyPI's Linux torch pulls in the CUDA stack).
Install the CPU build into the benchmark's environment, or give `run.py --timm-python` an
interpreter that has them:

    pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install timm

The timm models are the named ViTs (`vit_tiny_patch16_224`, ...) with the benchmark's image
size, patch size and classes: the same parameter count as keras_vit's, which run.py checks.
"""

import json
import os
import subprocess
import sys
import tempfile

TIMM_NAMES = {"Ti": "vit_tiny_patch16_224", "S": "vit_small_patch16_224", "B": "vit_base_patch16_224"}


class TimmPeer:
    """The parent's handle on the child process. Every method raises RuntimeError on a failure."""

    def __init__(self, python):
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            [python, os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            # torch.compile without its pool of compile worker processes: less memory.
            env={**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"},
        )
        try:
            self.versions = self._ask(op="versions")
        except RuntimeError:
            self.close()
            raise

    def _ask(self, **request):
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self._stderr.seek(0)
            raise RuntimeError(f"the timm process exited:\n{self._stderr.read()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"timm peer, {request['op']}: {reply['error']}")
        return reply

    def build(self, name, size, image_size, patch_size, num_classes, batch, compiled):
        """Builds (and for `compiled`, compiles) a model in the child; returns its parameter count.

        A call is one AdamW step (lr 1e-3, cross-entropy) on the batch of
        `peers.training_step`: images uniform in [-1, 1] with seed 0, labels with seed 1.
        """
        return self._ask(op="build", name=name, model=TIMM_NAMES[size], image_size=image_size, patch_size=patch_size,
                         num_classes=num_classes, batch=batch, compiled=compiled)["parameters"]

    def caller(self, name):
        """A no-argument function that runs one call of model `name` in the child."""
        return lambda: self._ask(op="run", name=name)

    def drop(self, name):
        self._ask(op="drop", name=name)

    def close(self):
        if self._process.poll() is None:
            self._process.stdin.close()
        self._process.wait(timeout=60)
        for stream in (self._process.stdin, self._process.stdout, self._stderr):
            stream.close()


def start(python):
    """A TimmPeer, or None with the reason when `python` lacks torch or timm."""
    probe = subprocess.run([python, "-c", "import torch, timm"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return TimmPeer(python), None


def serve():
    """The child: answers JSON requests on stdin, one line each, until stdin closes."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever torch prints goes to stderr, not into the replies

    import numpy as np
    import timm
    import torch

    models = {}

    def build(model, image_size, patch_size, num_classes, batch, compiled, name):
        network = timm.create_model(model, img_size=image_size, patch_size=patch_size, num_classes=num_classes)
        network.train()
        images = np.random.RandomState(0).uniform(-1, 1, (batch, image_size, image_size, 3)).astype("float32")
        images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
        labels = torch.from_numpy(np.random.RandomState(1).randint(0, num_classes, batch)).long()
        forward = torch.compile(network) if compiled else network
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
            loss.backward()
            optimizer.step()
            return loss.item()

        for _ in range(2):  # compiles, when compiled
            step()
        models[name] = step
        return {"parameters": sum(p.numel() for p in network.parameters())}

    def versions():
        return {"torch": torch.__version__, "timm": timm.__version__, "torch_threads": torch.get_num_threads()}

    def run(name):
        models[name]()
        return {}

    def drop(name):
        del models[name]
        return {}

    handlers = {"versions": versions, "build": build, "run": run, "drop": drop}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = handlers[request.pop("op")](**request)
        except Exception as error:  # reported to the parent, which raises it
            reply = {"error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
