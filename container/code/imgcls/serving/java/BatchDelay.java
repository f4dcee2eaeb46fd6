package imgcls.serving;

import com.amazonaws.ml.mms.wlm.Model;
import com.amazonaws.ml.mms.wlm.ModelManager;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * How long a batch waits for company: imgcls.maxBatchDelayMs while requests have overlapped within
 * the last second, else 0.
 *
 * <p>A lone client then pays no batching delay at all (the worker takes its request at once), and
 * concurrent clients still get full batches: after a batch's answers leave, their next requests
 * arrive a few milliseconds apart, and a worker that did not wait would take them one at a time.
 * MMS's aggregator reads the model's delay when a worker starts waiting for its next batch, so a
 * change applies from the next batch on.
 */
final class BatchDelay {
    static final int CONFIGURED_MS = Integer.getInteger("imgcls.maxBatchDelayMs", 5);
    private static final long OVERLAP_WINDOW_NANOS = TimeUnit.SECONDS.toNanos(1);
    private static final AtomicInteger IN_FLIGHT = new AtomicInteger();
    private static volatile boolean overlapped;
    private static volatile long lastOverlap;
    private static volatile int applied = -1;

    private BatchDelay() {}

    /** An /invocations request has been read whole and goes to the worker. */
    static void started() {
        long now = System.nanoTime();
        if (IN_FLIGHT.incrementAndGet() > 1) {
            lastOverlap = now;
            overlapped = true;
        }
        int wanted = current(now);
        if (wanted != applied) {
            for (Model model : ModelManager.getInstance().getModels().values()) {
                model.setMaxBatchDelay(wanted);
            }
            applied = wanted;
        }
    }

    /** Its answer has left, or its connection closed first. */
    static void finished() {
        IN_FLIGHT.decrementAndGet();
    }

    /** The delay for now; also what a newly registered model starts with. */
    static int current(long now) {
        return overlapped && now - lastOverlap < OVERLAP_WINDOW_NANOS ? CONFIGURED_MS : 0;
    }
}
