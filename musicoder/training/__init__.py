"""Pieces of the pre-training loop kept out of `musicoder/train.py`: the DeepSpeed config
merge (`dsconfig`), checkpoint client state, pruning, universal conversion and export
(`checkpoint`), and TensorBoard metrics (`tb`)."""
