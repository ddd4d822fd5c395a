"""A cost model of round numbers for hand-worked timelines (tests/sim): embed 1 s, QKV = tokens s,
KV copy = tokens / 10 s, attention = query-key pairs s, MLP = tokens s, head 0.5 s."""
from sim.cost import CostModel


class StubCost(CostModel):
    def embed_s(self, tokens): return 1.0
    def pre_attention_s(self, tokens): return float(tokens)
    def kv_copy_s(self, tokens): return tokens / 10
    def attention_s(self, queries, keys, pairs): return float(pairs)
    def post_attention_s(self, tokens): return float(tokens)
    def head_s(self): return 0.5
