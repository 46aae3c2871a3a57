"""Stand-in for flash_attn.bert_padding in plain torch (see tests/support/README.md)."""

import torch
from einops import rearrange

__all__ = ["index_first_axis", "pad_input", "rearrange", "unpad_input"]


def index_first_axis(input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """input[indices] along the first axis (flash-attn wraps this in an autograd Function for speed)."""
    return input[indices]


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask=None):
    """(batch, seqlen, ...) -> (total_nnz, ...), indices, cu_seqlens, max_seqlen_in_batch, seqused."""
    all_masks = (attention_mask + unused_mask) if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max().item())
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, max_seqlen_in_batch, used_seqlens_in_batch


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """(total_nnz, ...) -> (batch, seqlen, ...), zeros where nothing was unpadded."""
    output = torch.zeros((batch * seqlen, *hidden_states.shape[1:]), dtype=hidden_states.dtype, device=hidden_states.device)
    output[indices] = hidden_states
    return output.reshape(batch, seqlen, *hidden_states.shape[1:])
