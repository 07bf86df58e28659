"""Tensor parallelism: layers whose weight matrices are split across a tensor
group (Megatron's column- and row-parallel pattern), a vocabulary-parallel
embedding and cross-entropy. Each layer is made from its dense version, built
whole from the (seed, global name) RNG, then sliced, so a tensor-parallel model
starts exactly like one process."""
