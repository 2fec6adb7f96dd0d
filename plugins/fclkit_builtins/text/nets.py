"""The torch modules behind the text client models (imported only when a model is built)."""

from __future__ import annotations

import torch
from torch import nn


def trim(x: torch.Tensor) -> torch.Tensor:
    """Drop the padding columns that every row of the batch has at its end."""
    x = x.long()
    nonzero = (x != 0).any(0).nonzero()
    used = int(nonzero.max().item()) + 1 if len(nonzero) else 1
    return x[:, :used]


class ByteNgramBag(nn.Module):
    """Mean of hashed byte n-gram embeddings (fastText-like), then an MLP.

    The mean and the hidden layer are layer-normalised (see :class:`ByteCNN` for why).
    """

    def __init__(self, buckets: int, dim: int, ngrams: int, hidden: int, dropout: float,
                 num_classes: int) -> None:
        super().__init__()
        self.buckets, self.ngrams = buckets, ngrams
        self.embed = nn.Embedding(buckets + 1, dim, padding_idx=0)  # 0 = no n-gram
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.LayerNorm(hidden),
                                 nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = trim(x)
        mask = x != 0
        ids, valid = [], []
        for n in range(1, self.ngrams + 1):
            if x.shape[1] < n:
                break
            span = x.shape[1] - n + 1
            code = torch.zeros_like(x[:, :span])
            ok = torch.ones_like(mask[:, :span])
            for j in range(n):
                code = code * 257 + x[:, j:j + span]
                ok = ok & mask[:, j:j + span]
            code = (code * 1_000_003 + n * 7_919) % self.buckets + 1
            ids.append(code * ok)
            valid.append(ok)
        summed = self.embed(torch.cat(ids, 1)).sum(1)
        mean = summed / torch.cat(valid, 1).sum(1, keepdim=True).clamp(min=1)
        return self.mlp(mean)


class ByteCNN(nn.Module):
    """Byte embeddings, parallel 1-D convolutions, global max pooling.

    Each convolution's output is layer-normalised over its channels at every position
    before the ReLU, and the pooled features once more before the output layer. Without
    them, SGD at the default local settings (lr 0.05, momentum 0.9) let the max-pooled
    features and the logits grow until the loss jumped and the weights became NaN in some
    seeds; normalised, the features the output layer sees keep a fixed scale.
    """

    def __init__(self, vocab: int, dim: int, channels: int, kernels: tuple[int, ...],
                 dropout: float, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, k, padding=k // 2) for k in kernels)
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in kernels)
        self.pooled_norm = nn.LayerNorm(channels * len(kernels))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(channels * len(kernels), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = trim(x)
        mask = (x != 0).unsqueeze(1)
        h = self.embed(x).transpose(1, 2)  # (N, dim, L)
        pooled = []
        for conv, norm in zip(self.convs, self.norms, strict=True):
            a = conv(h)[..., :x.shape[1]]
            a = torch.relu(norm(a.transpose(1, 2)).transpose(1, 2))
            pooled.append((a * mask).amax(-1))  # ReLU >= 0, so masked zeros never win
        return self.out(self.drop(self.pooled_norm(torch.cat(pooled, 1))))


class ByteGRU(nn.Module):
    """Byte embeddings read by a GRU; the last hidden state of each row classifies."""

    def __init__(self, vocab: int, dim: int, hidden: int, bidirectional: bool,
                 num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = trim(x)
        lengths = (x != 0).sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(x), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.gru(packed)  # (directions, N, hidden)
        return self.out(torch.cat(list(h), dim=1))
