"""Offline training for the helpers and the base model: data loaders and builders (:mod:`train.data`), TRL
trainers for SFT, reward modelling, DPO and KTO (:mod:`train.sft`, :mod:`train.rm`, :mod:`train.dpo`,
:mod:`train.kto`), our own PPO (:mod:`train.ppo`), and the evaluation helpers (:mod:`train.evaluate`), all behind
``aligngate train METHOD --config RECIPE.yaml [key=value ...]`` (:mod:`train.run`).
"""
