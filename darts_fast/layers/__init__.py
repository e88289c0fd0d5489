"""Plain-torch layers with a cheaper backward pass: the depthwise convolution's input gradient
(``depthwise``) and max pooling that keeps no indices (``max_pool``)."""
