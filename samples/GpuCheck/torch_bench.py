"""PyTorch's side of the GPU check: torchvision's ResNet-50 on the same card, fp32 with TF32 off (as gpucheck).

Inference is timed from host memory to host memory (input copied to the GPU, logits copied back), as gpucheck
times Unrolled; training is forward + backward + SGD (momentum 0.9, weight decay 1e-4) on device-resident batches.
Prints lines in gpucheck's format. Needs torch and torchvision with CUDA.
"""
import time

import torch
import torchvision

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.benchmark = True
device = torch.device("cuda")
print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)}")

model = torchvision.models.resnet50().to(device).eval()
with torch.no_grad():
    for batch in (1, 32, 256):
        x = torch.rand(batch, 3, 224, 224).pin_memory()
        for _ in range(3):
            model(x.to(device, non_blocking=True)).cpu()
        runs = max(5, 512 // batch)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(runs):
            model(x.to(device, non_blocking=True)).cpu()
        seconds = time.perf_counter() - start
        print(f"torch inference resnet50 batch {batch}: {batch * runs / seconds:.0f} img/s ({seconds * 1000 / runs:.2f} ms per batch)")

model.train()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
loss_fn = torch.nn.CrossEntropyLoss()
for batch in (64, 128):
    x = torch.rand(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    for _ in range(3):
        step()
    runs = 10
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(runs):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"torch training resnet50 batch {batch}: {batch * runs / seconds:.0f} img/s ({seconds * 1000 / runs:.1f} ms per step)")
