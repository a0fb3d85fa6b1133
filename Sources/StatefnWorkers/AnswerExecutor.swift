// Where a request's task continues once its worker has answered: on the worker pool's I/O thread, which read the
// answer, instead of on a cooperative-pool thread that would have to be woken for it.

/// A task executor for request handlers (`Task.immediate(executorPreference:)`). The job that resuming a handler
/// with its worker's answer enqueues (`WorkerPool.deliver`) runs on the worker pool's I/O thread right after the
/// current event: the rest of the request (building the response, or starting its commit) saves a thread wake-up.
/// Every other job, including those of tasks that this one wakes in turn, goes to Swift's global concurrent
/// executor as usual.
public final class AnswerExecutor: TaskExecutor {
    private let loop: EventLoop

    init(loop: EventLoop) {
        self.loop = loop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        guard loop.inLoopThread, loop.inlineResumes else {
            return globalConcurrentExecutor.enqueue(job)
        }
        loop.runAfterCurrentEvent(job, on: asUnownedTaskExecutor())
    }
}
