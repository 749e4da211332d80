"""archcomposer-nemotron: an example archcomposer plugin.

It adds the Nemotron family (``family: nemotron``, reading and writing Hugging Face
``NemotronForCausalLM`` and its task heads), two block kinds (``norm: {kind: layernorm1p}``, a
LayerNorm with a ``1 + w`` scale, and ``mlp: {kind: squared_relu}``) and shipped specs
(``nemotron-3-8b``, ``tiny-nemotron``). archcomposer finds it through the ``nemotron`` entry point
of the ``archcomposer.plugins`` group, which names ``archcomposer_nemotron.plugin``. Importing this
package registers nothing."""

__version__ = "0.1.0"
