"""archcomposer-llama: an example archcomposer plugin.

It adds the Llama family (``family: llama``, reading and writing Hugging Face ``LlamaForCausalLM``
and its task heads), two block kinds (``position: {kind: llama3_rope}``, Llama 3.1's scaled
RoPE, and ``attention: {kind: sliding_window}``, Mistral-style windowed attention) and shipped
specs (``llama-3.2-1b``, ``tiny-llama``, ``tiny-llama-swa``). archcomposer finds it through the
``llama`` entry point of the ``archcomposer.plugins`` group, which names ``archcomposer_llama.plugin``.
Importing this package registers nothing."""

__version__ = "0.1.0"
