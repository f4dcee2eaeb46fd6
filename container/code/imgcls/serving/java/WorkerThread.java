package com.amazonaws.ml.mms.wlm;

import com.amazonaws.ml.mms.metrics.Dimension;
import com.amazonaws.ml.mms.metrics.Metric;
import com.amazonaws.ml.mms.util.ConfigManager;
import com.amazonaws.ml.mms.util.Connector;
import com.amazonaws.ml.mms.util.codec.ModelRequestEncoder;
import com.amazonaws.ml.mms.util.codec.ModelResponseDecoder;
import com.amazonaws.ml.mms.util.messages.BaseModelRequest;
import com.amazonaws.ml.mms.util.messages.InputParameter;
import com.amazonaws.ml.mms.util.messages.ModelWorkerResponse;
import com.amazonaws.ml.mms.util.messages.RequestInput;
import com.amazonaws.ml.mms.util.messages.WorkerCommands;
import io.netty.bootstrap.Bootstrap;
import io.netty.channel.Channel;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.SimpleChannelInboundHandler;
import io.netty.handler.codec.http.HttpResponseStatus;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.channels.Channels;
import java.util.UUID;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Drives one backend worker: connects to its socket, sends it batches, hands its answers to the
 * clients and restarts it when it dies. First on the class path, it replaces multi-model-server
 * 1.1.11's class of the same name, with the same public surface and life cycle, but for two things.
 *
 * <p>The answer path: MMS queued each answer for this thread, which then woke up to send it, and
 * this thread also woke up once more per batch to see its request written: two thread wake-ups per
 * request that do no work of their own (their latency cost was within the noise on a 2-core machine,
 * bench/serve_settings.py). Here the backend connection's event loop sends the answers as soon as it
 * has decoded them, a failed write closes the connection (which ends this thread's wait), and this
 * thread wakes only to take the next batch and to see the last one answered. An answer that comes
 * after its batch failed is dropped (MMS left it queued, where its next run could take it for the
 * answer to its first request).
 *
 * <p>Restarts: the first restart of a worker that died is immediate (see RESTART_DELAY_SECONDS).
 */
public class WorkerThread implements Runnable {

    private static final Logger logger = LoggerFactory.getLogger(WorkerThread.class);
    private static final Logger metricsLogger = LoggerFactory.getLogger("MMS_METRICS");
    private static final ModelRequestEncoder ENCODER = new ModelRequestEncoder(ConfigManager.getInstance().getPreferDirectBuffer());
    /**
     * Seconds before each restart in a row of a worker that died (reset once its model loads). The
     * first is immediate: a worker killed once (out of memory, a crash) is replaced at once, where MMS
     * waited a second with no worker; one that keeps dying still backs off.
     */
    private static final int[] RESTART_DELAY_SECONDS = {0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597};
    /** Exit status of a process killed by the kernel's out-of-memory killer (SIGKILL). */
    private static final int KILLED = 137;
    private static final long CONNECT_TIMEOUT_MINUTES = ConfigManager.getInstance().isDebug() ? Long.MAX_VALUE : 2L;

    private final EventLoopGroup backendEventGroup;
    private final int port;
    private final int gpuId;
    private final Model model;
    private final BatchAggregator aggregator;
    private final WorkerStateListener listener;
    private final WorkerLifeCycle lifeCycle;
    private final boolean serverThread;
    private final String threadName;
    private final String workerId;
    private final long startTime;
    private final Metric workerLoadTime;

    private final AtomicBoolean running = new AtomicBoolean(true);
    private final AtomicReference<Thread> currentThread = new AtomicReference<>();
    /** The batch the worker is computing; whoever takes it out answers its clients, exactly once. */
    private final AtomicReference<BaseModelRequest> unanswered = new AtomicReference<>();
    /** Wakes this thread when the worker has answered (the answer has already been sent). */
    private final ArrayBlockingQueue<ModelWorkerResponse> answered = new ArrayBlockingQueue<>(1);

    private volatile WorkerState state;
    private volatile Channel backendChannel;
    private Connector connector;
    private int restarts;
    private long memory;
    private RandomAccessFile stdout;
    private RandomAccessFile stderr;

    public WorkerThread(ConfigManager configManager, EventLoopGroup backendEventGroup, int port, int gpuId, Model model,
            BatchAggregator aggregator, WorkerStateListener listener, int threadNumber, boolean serverThread) {
        this.backendEventGroup = backendEventGroup;
        this.port = port;
        this.gpuId = gpuId;
        this.model = model;
        this.aggregator = aggregator;
        this.listener = listener;
        this.serverThread = serverThread;
        this.workerId = String.valueOf(port);
        this.startTime = System.currentTimeMillis();
        this.lifeCycle = new WorkerLifeCycle(configManager, model);
        String name = model.getModelName();
        this.threadName = serverThread ? "BackendServer-" + name : "W-" + name.substring(0, Math.min(name.length(), 25)) + '-' + threadNumber;
        this.workerLoadTime = new Metric(getWorkerName(), String.valueOf(startTime), "ms",
                ConfigManager.getInstance().getHostName(), new Dimension("Level", "Host"));
    }

    @Override
    public void run() {
        Thread thread = Thread.currentThread();
        thread.setName(getWorkerName());
        currentThread.set(thread);
        HttpResponseStatus status = HttpResponseStatus.INTERNAL_SERVER_ERROR;
        Process backendServer = null;
        try {
            if (serverThread) {
                model.setPort(port);
                lifeCycle.startBackendServer(port);
                backendServer = lifeCycle.getProcess();
                setState(WorkerState.WORKER_MODEL_LOADED, HttpResponseStatus.OK);
                backendServer.waitFor();
            } else {
                connect();
                serveBatches();
            }
        } catch (InterruptedException e) {
            if (state == WorkerState.WORKER_SCALED_DOWN) {
                logger.debug("Shutting down the thread .. Scaling down.");
            } else {
                logger.debug("Backend worker monitoring thread interrupted or backend worker process died.", e);
            }
        } catch (WorkerInitializationException e) {
            logger.error("Backend worker error", e);
        } catch (OutOfMemoryError e) {
            logger.error("Out of memory error when creating workers", e);
            status = HttpResponseStatus.INSUFFICIENT_STORAGE;
        } catch (Throwable t) {
            logger.warn("Backend worker thread exception.", t);
        } finally {
            Channel channel = backendChannel;
            if (channel != null) {
                channel.disconnect();
            }
            currentThread.set(null);
            Integer exitValue = lifeCycle.getExitValue();
            if (exitValue != null && exitValue == KILLED) {
                status = HttpResponseStatus.INSUFFICIENT_STORAGE;
            }
            if (serverThread) {
                model.setPort(-1);
                stopProcess(backendServer);
            } else {
                BaseModelRequest batch = unanswered.getAndSet(null);
                if (batch != null) {
                    aggregator.sendError(batch, "Worker died.", status);
                }
            }
            setState(WorkerState.WORKER_STOPPED, status);
            lifeCycle.exit();
            retry();
        }
    }

    private void serveBatches() throws WorkerInitializationException, InterruptedException, IOException {
        int timeoutSeconds = model.getResponseTimeoutSeconds();
        String queue = backendChannel.id().asLongText();
        answered.clear(); // an answer that arrived as the last run of this worker ended
        while (isRunning()) {
            BaseModelRequest batch = aggregator.getRequest(queue, state);
            unanswered.set(batch);
            backendChannel.writeAndFlush(batch).addListener(ChannelFutureListener.CLOSE_ON_FAILURE);
            ModelWorkerResponse reply = answered.poll(timeoutSeconds, TimeUnit.SECONDS);
            if (reply == null) {
                logger.error("Number or consecutive unsuccessful inference {}", model.incrFailedInfReqs());
                throw new WorkerInitializationException("Backend worker did not respond in given time");
            }
            if (batch.getCommand() == WorkerCommands.PREDICT) {
                model.resetFailedInfReqs();
            } else if (batch.getCommand() == WorkerCommands.LOAD) {
                loaded(reply);
            }
        }
    }

    private void loaded(ModelWorkerResponse reply) throws IOException {
        if (reply.getCode() != 200) {
            setState(WorkerState.WORKER_ERROR, HttpResponseStatus.valueOf(reply.getCode()));
            return;
        }
        setState(WorkerState.WORKER_MODEL_LOADED, HttpResponseStatus.OK);
        String message = reply.getMessage();
        lifeCycle.setPid(Integer.parseInt(message.substring(message.indexOf("[PID]:") + 6)));
        // The worker writes its output to two pipes named after the connection, read back into the log.
        releaseWorkerOutput(); // the last worker's, whose output has been read by now
        String prefix = System.getProperty("java.io.tmpdir") + '/' + backendChannel.id().asLongText();
        stdout = new RandomAccessFile(prefix + "-stdout", "rw");
        stderr = new RandomAccessFile(prefix + "-stderr", "rw");
        lifeCycle.attachIOStreams(threadName, Channels.newInputStream(stdout.getChannel()),
                Channels.newInputStream(stderr.getChannel()));
        restarts = 0;
    }

    private void connect() throws WorkerInitializationException, InterruptedException {
        if (model.getPort() == -1) {
            throw new WorkerInitializationException("Backend server is not runniing");
        }
        setState(WorkerState.WORKER_STARTED, HttpResponseStatus.OK);
        int maxReplySize = ConfigManager.getInstance().getMaxResponseSize();
        connector = new Connector(port);
        Bootstrap bootstrap = new Bootstrap().group(backendEventGroup).channel(connector.getClientChannel())
                .handler(new ChannelInitializer<Channel>() {
                    @Override
                    public void initChannel(Channel channel) {
                        channel.pipeline().addLast(ENCODER, new ModelResponseDecoder(maxReplySize), new AnswerHandler());
                    }
                });
        logger.info("Connecting to: {}", connector.getSocketAddress());
        CountDownLatch ready = new CountDownLatch(1);
        try {
            backendChannel = bootstrap.connect(connector.getSocketAddress()).sync().channel();
        } catch (InterruptedException e) {
            throw e;
        } catch (Exception e) { // sync() rethrows the connect failure, unchecked
            throw new WorkerInitializationException("Failed to connect to worker.", e);
        }
        backendChannel.closeFuture().addListener((ChannelFutureListener) future -> {
            ready.countDown();
            logger.info("{} Worker disconnected. {}", workerId, state);
            Thread waiting = currentThread.getAndSet(null);
            if (waiting != null) {
                waiting.interrupt();
            }
        });
        RequestInput load = new RequestInput(UUID.randomUUID().toString());
        if (gpuId >= 0) {
            load.addParameter(new InputParameter("gpu", String.valueOf(gpuId)));
        }
        model.addJob(backendChannel.id().asLongText(), new Job(null, model.getModelName(), WorkerCommands.LOAD, load));
        ready.countDown();
        if (!ready.await(CONNECT_TIMEOUT_MINUTES, TimeUnit.MINUTES)) {
            throw new WorkerInitializationException("Worker failed to initialize within " + CONNECT_TIMEOUT_MINUTES + " mins");
        }
        running.set(true);
    }

    /**
     * Stops the readers of a worker's output and closes our ends of its pipes. MMS kept them for good:
     * as it opens the pipes read-write, its readers never see an end of file, and each restart left
     * two threads and two descriptors behind.
     */
    private void releaseWorkerOutput() {
        lifeCycle.terminateIOStreams();
        for (RandomAccessFile pipe : new RandomAccessFile[] {stdout, stderr}) {
            try {
                if (pipe != null) {
                    pipe.close(); // a reader blocked in read() ends here
                }
            } catch (IOException e) {
                logger.error("Failed to close IO file handles", e);
            }
        }
        stdout = null;
        stderr = null;
    }

    private static void stopProcess(Process process) {
        if (process == null || !process.isAlive()) {
            return;
        }
        process.destroyForcibly();
        try {
            process.waitFor(1, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            logger.warn("WorkerThread interrupted during waitFor, possible asynch resource cleanup.");
        }
    }

    void retry() {
        if (state == WorkerState.WORKER_SCALED_DOWN) {
            logger.debug("Worker terminated due to scale-down call.");
            return;
        }
        int delay = RESTART_DELAY_SECONDS[Math.min(restarts, RESTART_DELAY_SECONDS.length - 1)];
        restarts++;
        ModelManager manager = ModelManager.getInstance();
        manager.getScheduler().schedule(() -> manager.submitTask(this), delay, TimeUnit.SECONDS);
        logger.info("Retry worker: {} in {} seconds.", workerId, delay);
    }

    void setState(WorkerState newState, HttpResponseStatus status) {
        listener.notifyChangeState(model.getModelName(), newState, status);
        logger.debug("{} State change {} -> {}", getWorkerName(), state, newState);
        if (state != WorkerState.WORKER_SCALED_DOWN) {
            state = newState; // a worker scaled down on purpose stays so
        }
        if (state == WorkerState.WORKER_MODEL_LOADED) {
            long now = System.currentTimeMillis();
            workerLoadTime.setValue(String.valueOf(now - startTime));
            workerLoadTime.setTimestamp(String.valueOf(TimeUnit.MILLISECONDS.toSeconds(now)));
            metricsLogger.info("{}", workerLoadTime);
        }
    }

    public void shutdown() {
        running.set(false);
        setState(WorkerState.WORKER_SCALED_DOWN, HttpResponseStatus.OK);
        Channel channel = backendChannel;
        if (channel != null) {
            model.removeJobQueue(channel.id().asLongText());
            channel.close();
        }
        if (serverThread && connector != null) {
            logger.debug("Cleaning connector socket");
            connector.clean();
        }
        logger.debug("Terminating IOStreams for worker thread shutdown");
        releaseWorkerOutput();
        Thread thread = currentThread.getAndSet(null);
        if (thread != null) {
            thread.interrupt();
            aggregator.sendError(null, "Worker scaled down.", HttpResponseStatus.INTERNAL_SERVER_ERROR);
        }
    }

    public WorkerState getState() {
        return state;
    }

    public WorkerLifeCycle getLifeCycle() {
        return lifeCycle;
    }

    public String getWorkerId() {
        return workerId;
    }

    public long getMemory() {
        return memory;
    }

    public void setMemory(long memory) {
        this.memory = memory;
    }

    public boolean isRunning() {
        return running.get();
    }

    public boolean isServerThread() {
        return serverThread;
    }

    public int getGpuId() {
        return gpuId;
    }

    public long getStartTime() {
        return startTime;
    }

    public int getPid() {
        return lifeCycle.getPid();
    }

    private String getWorkerName() {
        String name = model.getModelName();
        return "W-" + port + '-' + name.substring(0, Math.min(name.length(), 25));
    }

    /** Runs on the backend connection's event loop: answers the clients at once, then wakes the thread. */
    private final class AnswerHandler extends SimpleChannelInboundHandler<ModelWorkerResponse> {

        @Override
        public void channelRead0(ChannelHandlerContext ctx, ModelWorkerResponse reply) {
            if (unanswered.getAndSet(null) == null) {
                logger.warn("Dropped an answer that came after its batch had failed");
                return;
            }
            try {
                aggregator.sendResponse(reply);
            } finally {
                answered.offer(reply);
            }
        }

        @Override
        public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
            logger.error("Unknown exception", cause);
            ctx.close();
        }
    }
}
