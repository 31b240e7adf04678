import pytest
import torch

from advprune.models import build_model, list_models


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "vgg16_bn", "wrn_28_4"])
@pytest.mark.parametrize("shape,classes", [((1, 8, 8), 10), ((3, 32, 32), 100)])
def test_every_architecture_maps_images_to_logits(arch, shape, classes):
    model = build_model(arch, classes, shape[0], shape[1:], width=4)
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, classes)
    out.sum().backward()  # differentiable end to end, as attacks need


def test_registry_lists_every_architecture_and_rejects_unknown_ones():
    assert set(list_models()) >= {"small_cnn", "resnet18", "vgg16_bn", "wrn_28_4"}
    with pytest.raises(KeyError, match="unknown architecture 'vit'"):
        build_model("vit", 10, 3, (32, 32))


def test_resnet18_has_the_cifar_stem_and_standard_width():
    model = build_model("resnet18", 10, 3, (32, 32))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000  # ResNet-18: 11.17M
