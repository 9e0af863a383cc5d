"""Recurrent models: pure functions over pytree params, one batched ``step`` each."""
from sofo_lab.models.gru import GRU
from sofo_lab.models.lstm import LSTM
from sofo_lab.models.rnn import RateRNN

MODELS = {"rnn": RateRNN, "gru": GRU, "lstm": LSTM}

__all__ = ["GRU", "LSTM", "MODELS", "RateRNN"]
