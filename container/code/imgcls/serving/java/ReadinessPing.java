package imgcls.serving;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import com.amazonaws.ml.mms.wlm.ModelManager;
import software.amazon.ai.mms.servingsdk.Context;
import software.amazon.ai.mms.servingsdk.Model;
import software.amazon.ai.mms.servingsdk.ModelServerEndpoint;
import software.amazon.ai.mms.servingsdk.Worker;
import software.amazon.ai.mms.servingsdk.annotations.Endpoint;
import software.amazon.ai.mms.servingsdk.annotations.helpers.EndpointTypes;
import software.amazon.ai.mms.servingsdk.http.Request;
import software.amazon.ai.mms.servingsdk.http.Response;

/**
 * Replaces MMS's built-in /ping, which answers 200 even while no worker has loaded the model.
 * A worker counts as running once the Python handler's initialize (load + warm-up) has returned.
 *
 * It also turns on batching for the single model. MMS 1.1.11 registers models named at start-up
 * with batch size 1 (hard-coded), and a bare /invocations only reaches such a model; but its
 * batch aggregator reads the model's batch size and delay afresh for every batch, so setting
 * them once the model is registered is enough (the delay as BatchDelay has it now). serve's own start-up wait calls /ping, so this
 * happens before the first 200.
 */
@Endpoint(urlPattern = "ping", endpointType = EndpointTypes.INFERENCE,
          description = "200 once the model is loaded and warmed up, else 503")
public class ReadinessPing extends ModelServerEndpoint {
    /** Single model: a worker has loaded it (and batching is set). Multi-model: the server is up; SageMaker loads models later. */
    static boolean isReady(Context ctx) {
        if (Boolean.getBoolean("imgcls.multiModel")) {
            return true;
        }
        if (ctx.getModels().isEmpty()) {
            return false;
        }
        int batchSize = Integer.getInteger("imgcls.batchSize", 1);
        int batchDelayMs = BatchDelay.current(System.nanoTime());
        for (com.amazonaws.ml.mms.wlm.Model model : ModelManager.getInstance().getModels().values()) {
            model.setBatchSize(batchSize);
            model.setMaxBatchDelay(batchDelayMs);
        }
        for (Model model : ctx.getModels().values()) {
            boolean anyLoaded = false;
            for (Worker worker : model.getModelWorkers()) {
                anyLoaded |= worker.isRunning();
            }
            if (!anyLoaded) {
                return false;
            }
        }
        return true;
    }

    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        boolean ready = isReady(ctx);
        rsp.setStatus(ready ? 200 : 503);
        rsp.setContentType("application/json");
        String body = ready ? "{\"status\": \"Healthy\"}\n" : "{\"status\": \"Loading\"}\n";
        rsp.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
    }
}
