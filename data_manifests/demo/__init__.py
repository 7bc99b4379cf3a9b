"""Built-in demo corpus: `synth.py` makes the sounds, `corpus.py` writes the wav files and the manifest."""
from cmkd_pipe.data_manifests.demo.corpus import make_demo_corpus
from cmkd_pipe.data_manifests.demo.synth import DEMO_CLASSES

__all__ = ["DEMO_CLASSES", "make_demo_corpus"]
