"""Offline data builders and trainers (SFT, reward modelling, DPO/KTO, PPO) for the helpers and base model.

Empty until the training issue adds them.
"""
