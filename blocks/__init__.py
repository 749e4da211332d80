"""The `nn.Module` building blocks. Blocks take plain keyword-only arguments and already-built
submodules; they never read a spec (``archcomposer.spec`` does that and wires them together)."""
