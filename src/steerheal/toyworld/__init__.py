"""toyworld: a synthetic world with known moods and topics, its small trained LM, and exact metrics.

model, tok = steerheal.toyworld.load()
stories = steerheal.toyworld.sample(model, tok, n=32, seed=0, system="you are joyful .")
steerheal.toyworld.metrics.mood_rates(stories)["joy"]
"""

from steerheal.toyworld import metrics, world
from steerheal.toyworld.load import checkpoint_dir, load, sample
from steerheal.toyworld.train import TrainConfig, train

__all__ = ["TrainConfig", "checkpoint_dir", "load", "metrics", "sample", "train", "world"]
