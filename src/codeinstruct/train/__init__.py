"""Training a model from a recipe, one room per job.

prepare: the data, read and tokenized before anything is written. loop: train(), setup then the fit
loop. step: one optimizer step's loss, gradient accumulation and clipping. run_folder: config.yaml,
metrics.jsonl, held_out.jsonl, loss.png. checkpoint: resumable checkpoints. distributed: torchrun
processes and FSDP2 sharding. lora: adapters through peft. plan: will a recipe fit in GPU memory?
Which rows each step trains on is data.batches'; how they become tensors, data.packing's.
"""
