"""Op converters, one module per op family; importing this package registers them all."""

from modelport.to_torch.ops import (  # noqa: F401
    control_flow,
    conv,
    elementwise,
    legacy,
    loss,
    microsoft,
    ml,
    nn,
    quant,
    reduce,
    resize,
    rnn,
    sequence,
    shape,
    tensor,
)
