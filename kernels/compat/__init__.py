"""Drop-in replacements for the GDN entry points of other projects, on gdn_kernels' tuned kernels.

    gdn_kernels.compat.vllm     vLLM's `vllm.third_party.flash_linear_attention.ops` (and its gating)
    gdn_kernels.compat.sglang   SGLang's `sglang.srt.layers.attention.fla` GDN kernels
    gdn_kernels.compat.fla      flash-linear-attention's `fla.ops.gated_delta_rule`, `fla.modules.l2norm`

Each function keeps its project's name, parameter names, order, defaults, return shapes and dtypes, so a
model switches by changing an import; the state layout each one takes is the default of a parameter in
its signature (`state_layout="vk"`, or FLA's own `state_v_first=False`). What a project supports and we
do not raises NotImplementedError naming the argument. docs/integrations.md lists the lines to change.
The modules are imported on demand: `import gdn_kernels` does not load them.
"""
