"""A launch spy for kernel tests: stands in for a ``@triton.jit`` kernel (``monkeypatch.setattr``
on its module), records each launch and can corrupt its arguments to plant a bug."""

import inspect


class LaunchSpy:
    """Wraps ``kernel``: ``calls`` holds ``(grid, arguments by name)`` per launch; ``corrupt``, if
    given, may change those arguments (a deliberate bug) before the real kernel runs."""

    def __init__(self, kernel, corrupt=None):
        self.kernel, self.corrupt, self.calls = kernel, corrupt, []
        self.names = list(inspect.signature(kernel.fn).parameters)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            named = dict(zip(self.names, args)) | kwargs
            if self.corrupt:
                self.corrupt(named)
            self.calls.append((grid, named))
            return self.kernel[grid](**named)
        return launch
