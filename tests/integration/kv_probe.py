"""One vLLM CPU engine with the platform's KV-tier settings: generate greedily, print a
JSON line with the output tokens, their log-probabilities and the prompt tokens served from
cache. Run as a subprocess by test_kv_tier.py, so each run is a fresh engine process."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    from sluice.cache_tier.kv_tier import kv_transfer_config

    model_dir, prompt, use_tier = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    kwargs = ({"kv_transfer_config": KVTransferConfig(**kv_transfer_config("cpu"))}
              if use_tier else {})
    llm = LLM(model=model_dir, enforce_eager=True, dtype="float32", gpu_memory_utilization=0.2,
              max_model_len=2048, **kwargs)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, logprobs=1))[0]
    completion = out.outputs[0]
    logprobs = [step[tok].logprob for step, tok in zip(completion.logprobs, completion.token_ids)]
    print("RESULT " + json.dumps({"tokens": list(completion.token_ids), "logprobs": logprobs,
                                  "cached": out.num_cached_tokens,
                                  "prompt_tokens": len(out.prompt_token_ids)}), flush=True)


if __name__ == "__main__":
    main()
