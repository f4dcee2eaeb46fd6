package imgcls.serving;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
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
 */
@Endpoint(urlPattern = "ping", endpointType = EndpointTypes.INFERENCE,
          description = "200 once the model is loaded and warmed up, else 503")
public class ReadinessPing extends ModelServerEndpoint {
    /** Single model: its worker has loaded it. Multi-model: the server is up; SageMaker loads models later. */
    static boolean isReady(Context ctx) {
        if (Boolean.getBoolean("imgcls.multiModel")) {
            return true;
        }
        if (ctx.getModels().isEmpty()) {
            return false;
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
