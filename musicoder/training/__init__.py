"""Pre-training (DESIGN §7): the loop (`train`: `Pretrainer`, `run`), its config (`config`), the
DeepSpeed config merge (`dsconfig`), checkpoint client state, pruning, universal conversion and
export (`checkpoint`), and TensorBoard metrics (`tb`)."""
