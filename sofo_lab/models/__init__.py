"""Recurrent models: pure functions over pytree params, one batched ``step`` each.

Each model's YAML (conf/model/*.yaml) names its class with ``_target_``.
"""
from sofo_lab.models.gru import GRU
from sofo_lab.models.lstm import LSTM
from sofo_lab.models.rnn import RateRNN

__all__ = ["GRU", "LSTM", "RateRNN"]
