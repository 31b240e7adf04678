import pytest
import torch

from advprune.models import build_model, list_models


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "vgg16_bn", "wrn_28_4", "wrn_34_10", "mobilevit_xxs", "mobilevit_xs", "mobilevit_s"])
@pytest.mark.parametrize("shape,classes", [((1, 8, 8), 10), ((3, 32, 32), 100), ((3, 64, 64), 200)])
def test_every_architecture_maps_images_to_logits(arch, shape, classes):
    model = build_model(arch, classes, shape[0], shape[1:], width=4)
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, classes)
    out.sum().backward()  # differentiable end to end, as attacks need


def test_registry_lists_every_architecture_and_rejects_unknown_ones():
    assert set(list_models()) >= {"small_cnn", "resnet18", "vgg16_bn", "wrn_28_4", "wrn_34_10", "mobilevit_xxs", "mobilevit_xs", "mobilevit_s"}
    with pytest.raises(KeyError, match="unknown architecture 'vit'"):
        build_model("vit", 10, 3, (32, 32))


def test_resnet18_has_the_cifar_stem_and_standard_width():
    model = build_model("resnet18", 10, 3, (32, 32))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000  # ResNet-18: 11.17M


@pytest.mark.parametrize("arch,params", [("mobilevit_xxs", 1.27e6), ("mobilevit_xs", 2.32e6), ("mobilevit_s", 5.58e6), ("wrn_34_10", 46.2e6)])
def test_paper_sized_networks_have_the_published_parameter_counts(arch, params):
    """MobileViT: Table 4 of Mehta & Rastegari 2022 (1,000 ImageNet classes); WRN-34-10: 46.2M on CIFAR-10."""
    with torch.device("meta"):
        model = build_model(arch, 1000 if arch.startswith("mobilevit") else 10, 3, (32, 32))
    assert abs(sum(p.numel() for p in model.parameters()) / params - 1) < 0.03


@pytest.mark.parametrize("size,maps", [(32, [8, 4, 2]), (64, [16, 8, 4]), (256, [32, 16, 8])])
def test_mobilevit_reaches_its_transformer_blocks_at_the_intended_resolutions(size, maps):
    """Stem stride 1 for inputs up to 64x64 (the CIFAR / Tiny-ImageNet adaptation), the paper's stride 2 above."""
    model = build_model("mobilevit_xxs", 10, 3, (size, size), width=4)
    seen = []
    for block in (model.layer3[1], model.layer4[1], model.layer5[1]):
        block.register_forward_hook(lambda m, inputs, out: seen.append(out.shape[-1]))
    model(torch.rand(1, 3, size, size))
    assert seen == maps
