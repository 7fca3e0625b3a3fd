"""Feature extractors for SB3 policies, and the names by which hyperparameter files refer to them.

:class:`MinAtarCNN` is the network of the MinAtar paper (Young & Tian 2019, arXiv 1903.03176, section 4): one 3x3
convolution with 16 filters, stride 1 and no padding, ReLU, flatten, one fully connected layer of 128 ReLU units.
In the paper the actor-critic shares this torso and puts its policy and value outputs on the 128 units; with SB3's
``ActorCriticPolicy`` that is this extractor (shared by actor and critic, SB3's default) and ``net_arch: []``, so
``action_net`` and ``value_net`` are linear layers on the 128 features. On a 10x10 frame with C channels it has
16*(9C+1) + (16*8*8)*128 + 128 = 131,216 + 144C parameters before the heads.

:data:`FEATURES_EXTRACTORS` maps the names a YAML file may give as ``policy_kwargs.features_extractor_class`` to
classes (cli/hyperparams.py reads it; nothing is ``eval``-ed). The seed batch (agents/seed_batch.py) trains
:class:`MinAtarCNN` too: it runs the layers of :attr:`MinAtarCNN.net` for all seeds at once.
"""

from __future__ import annotations

from typing import Dict, Type

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from torch import nn


class MinAtarCNN(BaseFeaturesExtractor):
    """The MinAtar paper's network: Conv2d(C, 16, 3, stride 1) -> ReLU -> flatten -> Linear(., 128) -> ReLU.

    :param observation_space: a channel-first ``Box`` of shape (C, H, W), e.g. (4, 10, 10) for MinAtar's Breakout
        as envs/minatar.py builds it (values 0 or 1, fed as floats)
    :param filters: convolution filters (the paper: 16)
    :param features_dim: units of the fully connected layer, i.e. the features the heads see (the paper: 128)
    """

    def __init__(self, observation_space: spaces.Box, filters: int = 16, features_dim: int = 128) -> None:
        super().__init__(observation_space, features_dim)
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(f"MinAtarCNN needs a channel-first (C, H, W) Box observation space, got "
                             f"{observation_space}: use it on MinAtar ids (envs.make_env builds them channel-first)")
        channels, height, width = observation_space.shape
        if height < 3 or width < 3:
            raise ValueError(f"MinAtarCNN's 3x3 convolution needs frames of at least 3x3, got {height}x{width}")
        #: one Sequential of plain layers, so that the seed batch can run it layer by layer for all seeds
        self.net = nn.Sequential(
            nn.Conv2d(channels, filters, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(filters * (height - 2) * (width - 2), features_dim),
            nn.ReLU(),
        )

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


#: names for ``policy_kwargs.features_extractor_class`` in hyperparameter files
FEATURES_EXTRACTORS: Dict[str, Type[BaseFeaturesExtractor]] = {
    "MinAtarCNN": MinAtarCNN,
    "FlattenExtractor": FlattenExtractor,
}
